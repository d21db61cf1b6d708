#include "search_service/strategy_search.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/engine/transformer.h"
#include "common/util/cpu_time.h"
#include "search_service/calibrated_evaluator.h"
#include "search_service/cosine_evaluator.h"
#include "search_service/loss_evaluator.h"

namespace kvshare {

int SearchMaxRows(const CalibrationSet& calibration) {
  return std::max(calibration.tokens, std::min(calibration.samples * calibration.tokens, 2048));
}

const char* SearchPhaseName(SearchPhase phase) {
  switch (phase) {
    case SearchPhase::kCalibration:
      return "calibration";
    case SearchPhase::kGreedy:
      return "greedy";
  }
  return "?";
}

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Wall and CPU time since a start.
struct Stopwatch {
  Clock::time_point wall = Clock::now();
  double cpu = ProcessCpuSeconds();
  void Lap(StrategySearchResult* r) const {
    r->accept_seconds.push_back(Seconds(wall));
    r->accept_cpu_seconds.push_back(ProcessCpuSeconds() - cpu);
  }
};

// Times every acceptance of the evaluator it wraps.
class TimedEvaluator : public Evaluator {
 public:
  TimedEvaluator(Evaluator& inner, const Stopwatch& watch, StrategySearchResult* result)
      : inner_(inner), watch_(watch), result_(result) {}
  absl::StatusOr<double> Score(const std::vector<int>& kv_source, int first) override {
    return inner_.Score(kv_source, first);
  }
  absl::Status Accept(const std::vector<int>& kv_source, int first) override {
    absl::Status s = inner_.Accept(kv_source, first);
    watch_.Lap(result_);
    return s;
  }

 private:
  Evaluator& inner_;
  const Stopwatch& watch_;
  StrategySearchResult* const result_;
};

void FillProvenance(const SelectionOptions& options, const CalibrationSet& calibration,
                    const StrategySearchResult& r, StrategyProvenance* p) {
  const GreedyResult& g = r.selection.greedy;
  p->method = SearchMethodName(options.method);
  p->order = PairOrderName(options.greedy.order);
  p->threshold = options.method == SearchMethod::kKvSharer ? options.greedy.threshold : 0.0;
  p->best_of = options.best_of;
  p->max_nll_increase = options.max_nll_increase.value_or(0.0);
  p->calibration_hash = calibration.hash;
  p->target_layers = options.greedy.target_layers;
  p->score = g.score;
  p->calibration_score = r.calibration_score;
  p->note = absl::StrFormat(
      "calibration %d samples x %d tokens, forwards with %s; %s%s; best of %d%s; %d "
      "candidates scored, %d accepted, %d skipped",
      calibration.samples, calibration.tokens, CalibrationActivationsNote(options.activations),
      StopReasonName(g.stop),
      options.greedy.order == PairOrder::kRandom ? absl::StrFormat("; seed %d", options.greedy.seed)
                                                 : "",
      options.best_of,
      absl::StrCat(options.lazy ? " (lazy)" : "",
                   options.calibrated
                       ? absl::StrFormat(" (calibrated: scoring-set NLL with projections fitted "
                                         "at ridge %g)",
                                         options.calibration_ridge)
                       : ""),
      g.trace.size(), g.accepted, g.pairs_skipped);
}

}  // namespace

CpuBackendOptions CalibrationBackendOptions(int threads, cpu::Activations activations) {
  CpuBackendOptions o;
  o.threads = threads;
  o.matmul.activations = activations;
  if (activations == cpu::Activations::kInt8x2) o.logits_activations = cpu::Activations::kInt8;
  return o;
}

std::string CalibrationActivationsNote(cpu::Activations activations) {
  const CpuBackendOptions o = CalibrationBackendOptions(1, activations);
  std::string note = absl::StrCat(cpu::ActivationsName(activations), " activations");
  if (o.logits_activations.has_value() && *o.logits_activations != activations) {
    absl::StrAppend(&note, " (", cpu::ActivationsName(*o.logits_activations), " for logits)");
  }
  return note;
}

CpuBackendOptions SearchBackendOptions(int threads, const SelectionOptions& options) {
  return CalibrationBackendOptions(threads, options.activations);
}

absl::StatusOr<StrategySearchResult> RunStrategySearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const SelectionOptions& options,
                                                       const SearchHooks& hooks,
                                                       ProjectionCalibrator* calibrator) {
  const ModelConfig& c = model.config();
  absl::Status valid = ValidateSelectionOptions(options, c.n_layers);
  if (!valid.ok()) return valid;
  if (options.calibrated && calibrator == nullptr) {
    return absl::InvalidArgumentError(
        "calibrated scoring needs the projection fit and scoring sets (no calibrator given)");
  }
  const Stopwatch watch;
  const auto start = watch.wall;
  StrategySearchResult result;

  if (hooks.on_phase) hooks.on_phase(SearchPhase::kCalibration);
  if (hooks.cancel != nullptr && hooks.cancel->load(std::memory_order_acquire)) {
    return absl::CancelledError("search cancelled before the calibration forward pass");
  }
  auto transformer = Transformer::Create(model, backend, SearchMaxRows(calibration));
  if (!transformer.ok()) return transformer.status();
  KvAverager averager(c, calibration.tokens);
  std::unique_ptr<Evaluator> evaluator;
  LossEvaluator* loss = nullptr;
  if (options.method == SearchMethod::kKvSharer) {
    auto e = CosineEvaluator::Create(**transformer, calibration, &averager);
    if (!e.ok()) return e.status();
    evaluator = std::move(*e);
  } else {
    auto e =
        LossEvaluator::Create(**transformer, calibration, CandidateMetric::kNllIncrease, &averager,
                              /*keep_best=*/options.best_of > 1);
    if (!e.ok()) return e.status();
    loss = e->get();
    evaluator = std::move(*e);
  }
  auto averaged = averager.Result();
  if (!averaged.ok()) return averaged.status();
  result.distances = ComputeLayerDistances(*averaged);
  ForbidUnreadablePairs(c, &result.distances);
  result.calibration_seconds = Seconds(start);

  const auto greedy_start = Clock::now();
  if (hooks.on_phase) hooks.on_phase(SearchPhase::kGreedy);
  std::unique_ptr<CalibratedEvaluator> calibrated;
  if (options.calibrated) {
    calibrated = std::make_unique<CalibratedEvaluator>(*calibrator, model.fingerprint(), c.n_layers,
                                                       options.calibration_ridge, DType::kF16);
  }
  TimedEvaluator timed(calibrated != nullptr ? static_cast<Evaluator&>(*calibrated) : *evaluator,
                       watch, &result);
  auto selection =
      BestOfKSearch(result.distances, GreedyOptionsFor(options), {options.best_of, options.lazy},
                    timed, hooks.progress, hooks.cancel);
  if (!selection.ok()) return selection.status();
  result.selection = std::move(*selection);
  result.greedy_seconds = Seconds(greedy_start);
  if (loss != nullptr) {
    // The cosine of the final strategy (the accepted one: scored from the last layer).
    auto measured = loss->Measure(result.selection.greedy.kv_source);
    if (!measured.ok()) return measured.status();
    result.calibration_score = measured->cosine;
  } else {
    result.calibration_score = result.selection.greedy.score;
  }

  auto strategy = SharingStrategy::Create(result.selection.greedy.kv_source, model.fingerprint());
  if (!strategy.ok()) return strategy.status();
  result.total_seconds = Seconds(start);
  result.total_cpu_seconds = ProcessCpuSeconds() - watch.cpu;
  FillProvenance(options, calibration, result, &strategy->provenance());
  result.strategy = std::make_shared<const SharingStrategy>(std::move(*strategy));
  return result;
}

absl::StatusOr<double> CalibrationCosine(const Model& model, Backend& backend,
                                         const CalibrationSet& calibration,
                                         const std::vector<int>& kv_source) {
  const int L = model.config().n_layers;
  if (int(kv_source.size()) != L) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy has %d layers, the model %d", kv_source.size(), L));
  }
  int first = 1;
  while (first < L && kv_source[first] == first) ++first;
  if (first == L) return 1.0;  // the identity: the unshared model itself
  auto transformer = Transformer::Create(model, backend, SearchMaxRows(calibration));
  if (!transformer.ok()) return transformer.status();
  auto e = CosineEvaluator::Create(**transformer, calibration);
  if (!e.ok()) return e.status();
  return (*e)->Score(kv_source, first);
}

}  // namespace kvshare
