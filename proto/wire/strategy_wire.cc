#include "proto/wire/strategy_wire.h"

#include "absl/strings/str_format.h"

namespace kvshare {

void ToProto(const SharingStrategy& strategy, v1::SharingStrategy* out) {
  out->Clear();
  out->set_id(strategy.id());
  out->set_model_fingerprint(strategy.model_fingerprint());
  for (int s : strategy.kv_source()) out->add_kv_source(s);
  const StrategyProvenance& p = strategy.provenance();
  v1::StrategyProvenance* pp = out->mutable_provenance();
  pp->set_method(p.method);
  pp->set_order(p.order);
  pp->set_threshold(p.threshold);
  pp->set_calibration_hash(p.calibration_hash);
  pp->set_target_layers(p.target_layers);
  pp->set_score(p.score);
  pp->set_note(p.note);
}

absl::StatusOr<SharingStrategy> FromProto(const v1::SharingStrategy& msg) {
  auto st = SharingStrategy::Create({msg.kv_source().begin(), msg.kv_source().end()},
                                    msg.model_fingerprint());
  if (!st.ok()) return st.status();
  if (!msg.id().empty() && msg.id() != st->id()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy.id %s does not match its content (expected %s)", msg.id(), st->id()));
  }
  StrategyProvenance& p = st->provenance();
  if (msg.has_provenance()) {
    const v1::StrategyProvenance& pp = msg.provenance();
    p.method = pp.method();
    p.order = pp.order();
    p.threshold = pp.threshold();
    p.calibration_hash = pp.calibration_hash();
    p.target_layers = pp.target_layers();
    p.score = pp.score();
    p.note = pp.note();
  }
  return st;
}

}  // namespace kvshare
