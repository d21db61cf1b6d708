#include "inference_service/worker_quality_probe.h"

#include "absl/strings/str_cat.h"

namespace kvshare {

absl::StatusOr<QualityProbeResult> WorkerQualityProbe::Measure(
    std::shared_ptr<const SharingStrategy> strategy) {
  absl::MutexLock lock(&mu_);
  if (probe_ == nullptr) {
    auto device = MakeBackend(options_.device);
    if (!device.ok()) {
      return absl::Status(device.status().code(),
                          absl::StrCat("quality probe: ", device.status().message()));
    }
    auto probe =
        QualityProbe::Create(model_, tokenizer_, std::move(device->backend), options_.kv_type);
    if (!probe.ok()) return probe.status();
    probe_ = std::move(*probe);
  }
  auto r = probe_->Measure(std::move(strategy));
  if (r.ok()) r->mean_nll += options_.perturb_nats;
  return r;
}

double StrategyKvBytesPerToken(const ModelConfig& config, const SharingStrategy& strategy,
                               KvType type, int block_tokens) {
  KvGeometry g;
  g.block_tokens = block_tokens;
  g.n_kv_heads = config.n_kv_heads;
  g.head_dim = config.head_dim;
  g.type = type;
  return strategy.KvBytesPerToken(g);  // a plan's own types; `type` for a strategy without one
}

}  // namespace kvshare
