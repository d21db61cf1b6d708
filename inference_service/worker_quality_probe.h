// The worker's end of the quality probe (common/engine/quality_probe.h): the probe of each
// version the worker applies, measured on the worker's own device and KV type (what its
// requests run on), in a probe engine of its own beside the serving one (created at the first
// measurement; on a GPU that holds a second copy of the weights). The strategy subscriber
// sends the figure with the ACK; the control plane compares it with the registry's.
//
// `perturb_nats` is a test hook (kvshare-worker --quality-probe-perturb): added to every
// figure, it makes a worker whose kernels are right look wrong.
//
// Thread-safe: measurements are serialised.
#pragma once

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/quality_probe.h"
#include "kernels/device_backend.h"
#include "kernels/kv_type.h"

namespace kvshare {

struct WorkerProbeOptions {
  DeviceOptions device;  // as the serving engine's
  KvType kv_type = KvType::kF16;
  double perturb_nats = 0;
};

class WorkerQualityProbe {
 public:
  // `model` and `tokenizer` must outlive the probe.
  WorkerQualityProbe(const Model& model, const Tokenizer& tokenizer, WorkerProbeOptions options)
      : model_(model), tokenizer_(tokenizer), options_(std::move(options)) {}

  absl::StatusOr<QualityProbeResult> Measure(std::shared_ptr<const SharingStrategy> strategy);

 private:
  const Model& model_;
  const Tokenizer& tokenizer_;
  const WorkerProbeOptions options_;
  absl::Mutex mu_;
  std::unique_ptr<QualityProbe> probe_ ABSL_GUARDED_BY(mu_);
};

// KV bytes per token of `strategy` in a pool with `block_tokens`-token blocks: over its owning
// layers, each layer's type's block bytes / block_tokens — the plan's types, or `type` for a
// strategy without a plan (SharingStrategy::KvBytesPerToken; int4's per-sequence f16 tails are
// outside the pool and not counted).
double StrategyKvBytesPerToken(const ModelConfig& config, const SharingStrategy& strategy,
                               KvType type, int block_tokens);

}  // namespace kvshare
