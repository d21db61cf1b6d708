#include "search_service/kv_plan_runner.h"

#include <chrono>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/engine/engine.h"
#include "common/engine/transformer.h"
#include "common/util/cpu_time.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/loss_evaluator.h"
#include "search_service/strategy_search.h"

namespace kvshare {
namespace {

// PlanEvaluator over LossEvaluator: the NLL increase over the unshared fp32 model.
class LossPlanEvaluator : public PlanEvaluator {
 public:
  explicit LossPlanEvaluator(LossEvaluator& loss) : loss_(loss) {}
  absl::StatusOr<double> NllIncrease(const KvPlan& plan, int first_changed_layer,
                                     double reject_above) override {
    const EarlyReject reject{reject_above};
    auto c = loss_.ScorePlan(plan.kv_source, plan.kv_types, first_changed_layer,
                             std::isfinite(reject_above) ? &reject : nullptr);
    if (!c.ok()) return c.status();
    return c->nll_increase();
  }
  absl::Status Accept(const KvPlan& plan, int first_changed_layer) override {
    return loss_.AcceptPlan(plan.kv_source, plan.kv_types, first_changed_layer);
  }

 private:
  LossEvaluator& loss_;
};

}  // namespace

CpuBackendOptions KvPlanBackendOptions(int threads, const KvPlanOptions& options) {
  return CalibrationBackendOptions(threads, options.activations);
}

absl::StatusOr<KvPlanRun> RunKvPlanSearch(const Model& model, Backend& backend,
                                          const CalibrationSet& calibration, int block_tokens,
                                          const KvPlanOptions& options,
                                          const HeldoutIncreaseFn& heldout,
                                          const KvPlanHooks& hooks) {
  absl::Status valid = ValidateKvPlanOptions(options);
  if (!valid.ok()) return valid;
  KvPlanOptions simulated = options;
  simulated.block_tokens = block_tokens;
  valid = CheckPlanCalibration(simulated, calibration.tokens);
  if (!valid.ok()) return valid;
  const auto start = std::chrono::steady_clock::now();
  const double cpu0 = ProcessCpuSeconds();
  const ModelConfig& c = model.config();
  // Batches of half EarlyReject::min_units samples (SearchMaxRows' 2,048 rows hold 16 128-token
  // ones): a sharing candidate's scoring can then stop after the first 8 samples, and at every
  // 4 after (12, 16, ...) rather than every 8 (SmolLM2 at 1%: the sharing step 11.2 -> 9.4 s);
  // 512 rows still fill the GEMM tiles, and with int8x2 activations a token's result does not
  // depend on its batch.
  const int max_rows =
      calibration.tokens * std::max(1, std::min(calibration.samples, EarlyReject{}.min_units / 2));
  auto transformer = Transformer::Create(model, backend, max_rows);
  if (!transformer.ok()) return transformer.status();
  KvAverager averager(c, calibration.tokens);
  auto loss =
      LossEvaluator::Create(**transformer, calibration, CandidateMetric::kNllIncrease, &averager);
  if (!loss.ok()) return loss.status();
  (*loss)->set_kv_block_tokens(block_tokens);
  auto averaged = averager.Result();
  if (!averaged.ok()) return averaged.status();
  LayerDistances distances = ComputeLayerDistances(*averaged);
  ForbidUnreadablePairs(c, &distances);
  KvPlanRun run;
  run.calibration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  KvGeometry g;
  g.block_tokens = block_tokens;
  g.n_kv_heads = c.n_kv_heads;
  g.head_dim = c.head_dim;
  LossPlanEvaluator evaluator(**loss);
  auto result = SearchKvPlan(g, c.n_layers, options, evaluator, &distances, heldout, hooks);
  if (!result.ok()) return result.status();
  run.search = std::move(*result);
  // The cosine of the final plan: the accepted one's (the same plan unless the held-out trim
  // gave actions back or its growth added some; then scored from the first layer they differ).
  const KvPlan& plan = run.search.plan;
  KvPlan accepted{(*loss)->accepted(), (*loss)->accepted_types()};
  const int first = accepted.kv_types.empty() ? 0 : FirstPlanDifference(plan, accepted);
  if (first == c.n_layers) {
    run.calibration_cosine = (*loss)->accepted_loss().cosine;
  } else {
    auto final_loss = (*loss)->ScorePlan(plan.kv_source, plan.kv_types, first);
    if (!final_loss.ok()) return final_loss.status();
    run.calibration_cosine = final_loss->cosine;
  }
  run.total_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.total_cpu_seconds = ProcessCpuSeconds() - cpu0;
  return run;
}

absl::StatusOr<SharingStrategy> KvPlanStrategy(const Model& model, const KvPlan& plan) {
  auto s = SharingStrategy::Create(plan.kv_source, model.fingerprint());
  if (!s.ok()) return s.status();
  return s->WithKvTypes(plan.kv_types);
}

absl::StatusOr<KvPlanStrategyResult> RunKvPlanStrategySearch(
    const Model& model, const CalibrationSet& calibration, const HeldoutSlice& heldout, int threads,
    const KvPlanOptions& options, const KvPlanHooks& hooks, const HeldoutCheckFn& on_heldout,
    HeldoutBaselineCache* baselines) {
  absl::Status valid = ValidateKvPlanOptions(options);
  if (!valid.ok()) return valid;
  const ModelConfig& c = model.config();
  const int block_tokens = options.block_tokens;  // the serving pool's
  for (KvType t : options.all_types()) {
    KvGeometry g{block_tokens, c.n_kv_heads, c.head_dim, t};
    absl::Status s = ValidateKvGeometry(g);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KV plan type %s cannot hold model '%s': %s", KvTypeName(t), c.name, s.message()));
    }
  }
  KvPlanStrategyResult out;
  const auto start = std::chrono::steady_clock::now();
  auto meter = QualityMeter::Create(model, heldout, threads, hooks.cancel, block_tokens,
                                    options.activations, baselines);
  if (!meter.ok()) return meter.status();
  out.baseline_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double base_nll = (*meter)->baseline().mean_nll;
  KvPlan last_plan;
  double last_nll = base_nll;
  HeldoutIncreaseFn heldout_fn = [&](const KvPlan& plan,
                                     double reject_above) -> absl::StatusOr<double> {
    auto strategy = KvPlanStrategy(model, plan);
    if (!strategy.ok()) return strategy.status();
    const EarlyReject reject{reject_above};
    auto ppl = (*meter)->Perplexity(std::make_shared<const SharingStrategy>(std::move(*strategy)),
                                    std::isfinite(reject_above) ? &reject : nullptr);
    if (!ppl.ok()) return ppl.status();
    const double increase = NllIncreaseOver(*ppl, (*meter)->baseline());
    if (ppl->tokens_scored == heldout.targets()) {  // a whole-slice figure
      last_plan = plan;
      last_nll = ppl->mean_nll;
    }
    if (on_heldout) on_heldout(increase, ppl->tokens_scored);
    return increase;
  };
  auto backend = MakeCpuBackend(KvPlanBackendOptions(threads, options));
  auto run =
      RunKvPlanSearch(model, *backend, calibration, block_tokens, options, heldout_fn, hooks);
  if (!run.ok()) return run.status();
  out.run = std::move(*run);
  const KvPlanSearchResult& r = out.run.search;

  auto strategy = KvPlanStrategy(model, r.plan);
  if (!strategy.ok()) return strategy.status();
  StrategyProvenance& p = strategy->provenance();
  p.method = "kvplan";
  p.order = PairOrderName(options.share_order);
  p.best_of = options.share_best_of;
  p.calibration_hash = calibration.hash;
  p.target_layers = strategy->sharing_layers();
  p.score = -r.calibration_increase;
  std::vector<std::string> actions, types;
  for (const PlanAction& a : r.actions) actions.push_back(PlanActionString(a));
  for (KvType t : options.lower_types) types.push_back(KvTypeName(t));
  for (KvType t : options.floor_types) types.push_back(absl::StrCat(KvTypeName(t), " floor"));
  p.note = absl::StrFormat(
      "KV plan within %g%% held-out perplexity (types %s -> %s%s; %d-token blocks; forwards "
      "with %s): %d calibration runs of %d x %d tokens, %d held-out checks, %d "
      "actions given back, %d added on held-out slack; actions %s",
      options.max_ppl_increase, KvTypeName(options.base_type), absl::StrJoin(types, ","),
      options.share ? ", sharing" : "", block_tokens,
      CalibrationActivationsNote(options.activations), r.calibration_runs, calibration.samples,
      calibration.tokens, r.heldout_checks.size(), r.trimmed_actions, r.grown_actions,
      actions.empty() ? "none" : absl::StrJoin(actions, " "));
  StrategyQuality q;
  q.baseline_nll = base_nll;
  // The final plan's held-out NLL: the last check's when that was of the final plan, else the
  // search's figure for it (a failed growth attempt may come last).
  q.heldout_nll = last_plan == r.plan ? last_nll : base_nll + r.heldout_increase;
  q.heldout_tokens = heldout.targets();
  q.context = heldout.context;
  q.heldout_hash = heldout.hash;
  q.calibration_score = out.run.calibration_cosine;
  RecordQuality(q, &p);
  out.strategy = std::make_shared<const SharingStrategy>(std::move(*strategy));
  return out;
}

absl::StatusOr<StrategySearchResult> RunKvPlanAsSearch(
    const Model& model, const CalibrationSet& calibration, const HeldoutSlice& heldout, int threads,
    const KvPlanOptions& options, const SearchHooks& hooks, HeldoutBaselineCache* baselines) {
  if (hooks.on_phase) hooks.on_phase(SearchPhase::kCalibration);
  KvPlanHooks plan_hooks;
  plan_hooks.cancel = hooks.cancel;
  bool greedy_started = false;
  plan_hooks.progress = [&](const std::string&, int, int) {
    if (!greedy_started && hooks.on_phase) {  // the first step after the calibration
      greedy_started = true;
      hooks.on_phase(SearchPhase::kGreedy);
    }
  };
  auto planned = RunKvPlanStrategySearch(model, calibration, heldout, threads, options, plan_hooks,
                                         nullptr, baselines);
  if (!planned.ok()) return planned.status();
  StrategySearchResult r;
  r.strategy = planned->strategy;
  GreedyResult& g = r.selection.greedy;
  g.kv_source = planned->run.search.plan.kv_source;
  g.accepted = planned->strategy->sharing_layers();
  g.stop = StopReason::kTargetReached;
  g.score = -planned->run.search.calibration_increase;
  r.calibration_score = planned->run.calibration_cosine;
  r.calibration_seconds = planned->baseline_seconds + planned->run.calibration_seconds;
  r.total_seconds = planned->baseline_seconds + planned->run.total_seconds;
  r.greedy_seconds = r.total_seconds - r.calibration_seconds;
  r.total_cpu_seconds = planned->run.total_cpu_seconds;
  return r;
}

}  // namespace kvshare
