#include "search_service/kv_plan_runner.h"

#include <sys/resource.h>

#include <chrono>
#include <memory>

#include "common/engine/transformer.h"
#include "search_service/loss_evaluator.h"
#include "search_service/strategy_search.h"

namespace kvshare {
namespace {

double CpuSeconds() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// PlanEvaluator over LossEvaluator: the NLL increase over the unshared fp32 model.
class LossPlanEvaluator : public PlanEvaluator {
 public:
  explicit LossPlanEvaluator(LossEvaluator& loss) : loss_(loss) {}
  absl::StatusOr<double> NllIncrease(const KvPlan& plan, int first_changed_layer) override {
    auto c = loss_.ScorePlan(plan.kv_source, plan.kv_types, first_changed_layer);
    if (!c.ok()) return c.status();
    return c->nll - loss_.unshared().nll;
  }
  absl::Status Accept(const KvPlan& plan, int first_changed_layer) override {
    return loss_.AcceptPlan(plan.kv_source, plan.kv_types, first_changed_layer);
  }

 private:
  LossEvaluator& loss_;
};

}  // namespace

absl::StatusOr<KvPlanRun> RunKvPlanSearch(const Model& model, Backend& backend,
                                          const CalibrationSet& calibration, int block_tokens,
                                          const KvPlanOptions& options,
                                          const HeldoutIncreaseFn& heldout,
                                          const KvPlanHooks& hooks) {
  absl::Status valid = ValidateKvPlanOptions(options);
  if (!valid.ok()) return valid;
  const auto start = std::chrono::steady_clock::now();
  const double cpu0 = CpuSeconds();
  const ModelConfig& c = model.config();
  auto transformer = Transformer::Create(model, backend, SearchMaxRows(calibration));
  if (!transformer.ok()) return transformer.status();
  KvAverager averager(c, calibration.tokens);
  auto loss =
      LossEvaluator::Create(**transformer, calibration, CandidateMetric::kNllIncrease, &averager);
  if (!loss.ok()) return loss.status();
  (*loss)->set_kv_block_tokens(block_tokens);
  auto averaged = averager.Result();
  if (!averaged.ok()) return averaged.status();
  const LayerDistances distances = ComputeLayerDistances(*averaged);
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
  run.total_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.total_cpu_seconds = CpuSeconds() - cpu0;
  return run;
}

}  // namespace kvshare
