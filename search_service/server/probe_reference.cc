#include "search_service/server/probe_reference.h"

#include <vector>

#include "absl/strings/str_format.h"
#include "spdlog/spdlog.h"

namespace kvshare {

absl::StatusOr<ProbeReference::ModelProbe*> ProbeReference::ProbeFor(
    const std::string& fingerprint, const std::string& model_name) {
  if (auto it = probes_.find(fingerprint); it != probes_.end()) return &it->second;
  std::vector<std::string> names;
  if (catalog_->HasModel(model_name)) names.push_back(model_name);
  for (const std::string& n : catalog_->model_names()) {
    if (n != model_name) names.push_back(n);
  }
  for (const std::string& n : names) {
    auto m = catalog_->GetModel(n);
    if (!m.ok() || (*m)->model->fingerprint() != fingerprint) continue;
    auto probe = QualityProbe::Create(*(*m)->model, *(*m)->tokenizer, MakeCpuBackend(threads_),
                                      KvType::kF32);
    if (!probe.ok()) return probe.status();
    ModelProbe& mp = probes_[fingerprint];
    mp.model = *m;
    mp.probe = std::move(*probe);
    return &mp;
  }
  return absl::NotFoundError(
      absl::StrFormat("no catalog model has fingerprint %s, so the quality probe has no reference",
                      fingerprint.substr(0, 16)));
}

absl::StatusOr<v1::QualityProbe> ProbeReference::For(const SharingStrategy& strategy,
                                                     const std::string& model_name) {
  absl::MutexLock lock(&mu_);
  if (auto it = figures_.find(strategy.id()); it != figures_.end()) return it->second;
  auto mp = ProbeFor(strategy.model_fingerprint(), model_name);
  if (!mp.ok()) return mp.status();
  auto r = (*mp)->probe->Measure(std::make_shared<const SharingStrategy>(strategy));
  if (!r.ok()) return r.status();
  v1::QualityProbe out;
  out.set_mean_nll(r->mean_nll);
  out.set_tokens(r->tokens);
  spdlog::info(
      "event=quality_probe_reference strategy_id={} mean_nll={:.5f} tokens={} seconds={:.3f}",
      strategy.id().substr(0, 16), r->mean_nll, r->tokens, r->seconds);
  figures_[strategy.id()] = out;
  return out;
}

}  // namespace kvshare
