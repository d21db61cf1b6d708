#include "proto/wire/strategy_wire.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/excerpt.h"

namespace kvshare {

void ToProto(const SharingStrategy& strategy, v1::SharingStrategy* out) {
  out->Clear();
  out->set_id(strategy.id());
  out->set_model_fingerprint(strategy.model_fingerprint());
  for (int s : strategy.kv_source()) out->add_kv_source(s);
  for (int l : strategy.attention_dropped()) out->add_attention_dropped(l);
  if (strategy.projections() != nullptr) {
    ToProto(HeaderOf(*strategy.projections()), out->mutable_output_projections());
  }
  for (KvType t : strategy.kv_types()) out->add_kv_types(KvTypeName(t));
  const StrategyProvenance& p = strategy.provenance();
  v1::StrategyProvenance* pp = out->mutable_provenance();
  pp->set_method(p.method);
  pp->set_order(p.order);
  pp->set_threshold(p.threshold);
  pp->set_calibration_hash(p.calibration_hash);
  pp->set_target_layers(p.target_layers);
  pp->set_score(p.score);
  pp->set_note(p.note);
  pp->set_best_of(p.best_of);
  pp->set_max_nll_increase(p.max_nll_increase);
  if (p.has_quality()) {
    v1::StrategyQuality* q = pp->mutable_quality();
    q->set_heldout_ppl(p.heldout_ppl);
    q->set_baseline_ppl(p.baseline_ppl);
    q->set_heldout_tokens(p.heldout_tokens);
    q->set_heldout_context(p.heldout_context);
    q->set_heldout_hash(p.heldout_hash);
    q->set_calibration_score(p.calibration_score);
  }
}

void ToProto(const ProjectionsHeader& header, v1::OutputProjectionsRef* out) {
  out->Clear();
  out->set_type(ProjectionTypeName(header.type));
  out->set_rows(header.rows);
  out->set_cols(header.cols);
  for (int l : header.layers) out->add_layers(l);
  for (int l : header.substitutes) out->add_substitutes(l);
  out->set_sha256(header.sha256);
  out->set_blob_bytes(header.blob_bytes());
}

absl::StatusOr<ProjectionsHeader> FromProto(const v1::OutputProjectionsRef& msg,
                                            const std::string& where) {
  ProjectionsHeader h;
  auto type = ParseProjectionType(msg.type());
  if (!type.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".type: ", type.status().message()));
  }
  h.type = *type;
  h.rows = msg.rows();
  h.cols = msg.cols();
  h.layers.assign(msg.layers().begin(), msg.layers().end());
  h.substitutes.assign(msg.substitutes().begin(), msg.substitutes().end());
  h.sha256 = msg.sha256();
  return h;
}

absl::StatusOr<SharingStrategy> FromProto(const v1::SharingStrategy& msg,
                                          const ProjectionsResolver& resolve) {
  auto st = SharingStrategy::Create(
      {msg.kv_source().begin(), msg.kv_source().end()}, msg.model_fingerprint(),
      {msg.attention_dropped().begin(), msg.attention_dropped().end()});
  if (!st.ok()) return st.status();
  if (msg.kv_types_size() > 0) {
    std::vector<KvType> types;
    for (int l = 0; l < msg.kv_types_size(); ++l) {
      auto t = ParseKvType(msg.kv_types(l));
      if (!t.ok()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("strategy.kv_types[%d]: %s", l, t.status().message()));
      }
      types.push_back(*t);
    }
    auto with = st->WithKvTypes(std::move(types));
    if (!with.ok()) return with.status();
    st = std::move(with);
  }
  if (msg.has_output_projections()) {
    constexpr char kWhere[] = "strategy.output_projections";
    auto header = FromProto(msg.output_projections(), kWhere);
    if (!header.ok()) return header.status();
    absl::Status checked = CheckProjectionsHeader(*header, kWhere);
    if (!checked.ok()) return checked;
    if (!resolve) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s names projections %s, and nothing here can fetch them", kWhere, header->sha256));
    }
    auto projections = resolve(*header);
    if (!projections.ok()) return projections.status();
    auto with = st->WithProjections(std::move(*projections));
    if (!with.ok()) return with.status();
    st = std::move(with);
  }
  if (!msg.id().empty() && msg.id() != st->id()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy.id %s does not match its content (expected %s)", Excerpt(msg.id()), st->id()));
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
    p.best_of = pp.best_of();
    p.max_nll_increase = pp.max_nll_increase();
    if (pp.has_quality()) {
      const v1::StrategyQuality& q = pp.quality();
      p.heldout_ppl = q.heldout_ppl();
      p.baseline_ppl = q.baseline_ppl();
      p.heldout_tokens = q.heldout_tokens();
      p.heldout_context = q.heldout_context();
      p.heldout_hash = q.heldout_hash();
      p.calibration_score = q.calibration_score();
    }
    absl::Status bounded = SharingStrategy::CheckProvenance(p, "provenance");
    if (!bounded.ok()) return bounded;
  }
  return st;
}

int OwningLayers(const v1::SharingStrategy& msg) {
  int owning = 0;
  for (int l = 0; l < msg.kv_source_size(); ++l) owning += msg.kv_source(l) == l;
  return owning - msg.attention_dropped_size();  // a dropped layer is its own source
}

}  // namespace kvshare
