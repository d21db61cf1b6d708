#include "search_service/kvsharer_search.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"
#include "common/engine/transformer.h"
#include "search_service/cosine_evaluator.h"

namespace kvshare {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

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

absl::StatusOr<KvSharerSearchResult> RunKvSharerSearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const GreedyOptions& options,
                                                       const GreedyProgressFn& progress) {
  SearchHooks hooks;
  hooks.progress = progress;
  return RunKvSharerSearch(model, backend, calibration, options, hooks);
}

absl::StatusOr<KvSharerSearchResult> RunKvSharerSearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const GreedyOptions& options,
                                                       const SearchHooks& hooks) {
  const ModelConfig& c = model.config();
  absl::Status valid = ValidateGreedyOptions(options, c.n_layers);
  if (!valid.ok()) return valid;
  const auto start = std::chrono::steady_clock::now();
  if (hooks.on_phase) hooks.on_phase(SearchPhase::kCalibration);
  if (hooks.cancel != nullptr && hooks.cancel->load(std::memory_order_acquire)) {
    return absl::CancelledError("search cancelled before the calibration forward pass");
  }

  auto transformer = Transformer::Create(model, backend, SearchMaxRows(calibration));
  if (!transformer.ok()) return transformer.status();
  KvAverager averager(c, calibration.tokens);
  auto evaluator = CosineEvaluator::Create(**transformer, calibration, &averager);
  if (!evaluator.ok()) return evaluator.status();
  auto averaged = averager.Result();
  if (!averaged.ok()) return averaged.status();

  KvSharerSearchResult result;
  result.distances = ComputeLayerDistances(*averaged);
  result.calibration_seconds = Seconds(start);

  const auto greedy_start = std::chrono::steady_clock::now();
  if (hooks.on_phase) hooks.on_phase(SearchPhase::kGreedy);
  auto greedy = GreedySearch(result.distances, options, **evaluator, hooks.progress, hooks.cancel);
  if (!greedy.ok()) return greedy.status();
  result.greedy = std::move(*greedy);
  result.greedy_seconds = Seconds(greedy_start);

  auto strategy = SharingStrategy::Create(result.greedy.kv_source, model.fingerprint());
  if (!strategy.ok()) return strategy.status();
  StrategyProvenance& p = strategy->provenance();
  p.method = "kvsharer";
  p.order = PairOrderName(options.order);
  p.threshold = options.threshold;
  p.calibration_hash = calibration.hash;
  p.target_layers = options.target_layers;
  p.score = result.greedy.score;
  p.note = absl::StrFormat(
      "calibration %d samples x %d tokens; %s%s; %d pairs scored, %d accepted, %d skipped",
      calibration.samples, calibration.tokens, StopReasonName(result.greedy.stop),
      options.order == PairOrder::kRandom ? absl::StrFormat("; seed %d", options.seed) : "",
      result.greedy.trace.size(), result.greedy.accepted, result.greedy.pairs_skipped);
  result.strategy = std::make_shared<const SharingStrategy>(std::move(*strategy));
  result.total_seconds = Seconds(start);
  return result;
}

}  // namespace kvshare
