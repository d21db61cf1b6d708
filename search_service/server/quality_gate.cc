#include "search_service/server/quality_gate.h"

#include "absl/strings/str_format.h"

namespace kvshare {

double PplIncreasePct(const StrategyProvenance& p) {
  if (!p.has_quality() || p.baseline_ppl <= 0) return 0;
  return (p.heldout_ppl / p.baseline_ppl - 1.0) * 100.0;
}

absl::Status CheckQualityGate(const StrategyRecord& record, const std::string& model_name,
                              double budget_pct, bool allow) {
  if (allow) return absl::OkStatus();
  const std::string name = model_name.empty() ? record.model_name : model_name;
  const std::string model =
      name.empty() ? record.model_fingerprint.substr(0, 16)
                   : absl::StrFormat("%s (%s)", name, record.model_fingerprint.substr(0, 16));
  const StrategyProvenance& p = record.strategy->provenance();
  if (!p.has_quality()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "target_version %d of model %s has no recorded held-out quality, so it cannot be shown "
        "within the model's quality budget of %.2f%% perplexity increase; measure it (a search "
        "records it) or set allow_quality_regression",
        record.version, model, budget_pct));
  }
  const double increase = PplIncreasePct(p);
  // At the budget passes: 1e-9 points absorb the rounding of the ratio (20 -> 21 is
  // 5.000000000000004%).
  if (increase <= budget_pct + 1e-9) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "target_version %d of model %s raises held-out perplexity by %.2f%% (%.3f -> %.3f over %d "
      "tokens), past the model's quality budget of %.2f%% (catalog max_ppl_increase_pct); set "
      "allow_quality_regression to roll it out anyway",
      record.version, model, increase, p.baseline_ppl, p.heldout_ppl, p.heldout_tokens,
      budget_pct));
}

QualityGateRecord GateRecordFor(const StrategyRecord& record, double budget_pct, bool allow) {
  QualityGateRecord g;
  g.allow_quality_regression = allow;
  g.budget_pct = budget_pct;
  const StrategyProvenance& p = record.strategy->provenance();
  if (p.has_quality()) {
    v1::StrategyQuality q;
    q.set_heldout_ppl(p.heldout_ppl);
    q.set_baseline_ppl(p.baseline_ppl);
    q.set_heldout_tokens(p.heldout_tokens);
    q.set_heldout_context(p.heldout_context);
    q.set_heldout_hash(p.heldout_hash);
    q.set_calibration_score(p.calibration_score);
    g.quality = q;
  }
  return g;
}

void SetRunningQuality(const StrategyStore& store, const std::string& fingerprint, uint64_t version,
                       const std::string& strategy_id, v1::WorkerStatus* out) {
  if (version == 0) {
    out->set_has_quality(true);
    out->set_ppl_increase_pct(0);
    return;
  }
  auto record = store.Get(fingerprint, version);
  if (!record.ok() || record->strategy->id() != strategy_id) return;
  const StrategyProvenance& p = record->strategy->provenance();
  if (!p.has_quality()) return;
  out->set_has_quality(true);
  out->set_ppl_increase_pct(PplIncreasePct(p));
}

void RecordGate(const QualityGateRecord& gate, v1::Rollout* rollout) {
  rollout->set_allow_quality_regression(gate.allow_quality_regression);
  rollout->set_quality_budget_pct(gate.budget_pct);
  if (gate.quality.has_value()) *rollout->mutable_target_quality() = *gate.quality;
  if (gate.probe.has_value()) *rollout->mutable_target_probe() = *gate.probe;
}

}  // namespace kvshare
