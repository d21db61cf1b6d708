// The quality probe (issue 17, docs/ARCHITECTURE.md, The control plane): the mean next-token
// NLL of one short fixed text under a strategy. A worker measures it on its own backend and KV
// type when it applies a version and sends it with its ACK; the search service measures the
// same text the same way on the CPU backend with the exact fp32 cache, once per rollout
// target; the controller NACKs a worker whose figure differs by more than
// kQualityProbeToleranceNats. It catches a worker whose kernels or device compute a strategy
// wrongly, at the cost of one forward pass over kQualityProbeTokens tokens.
//
// The text: kQualityProbeText (plain English prose written for this probe, fixed: changing it
// changes every recorded figure). Scored as EvaluatePerplexity does, in one window: BOS (when
// the tokenizer has one) then the first min(kQualityProbeTokens, max_seq_len - 1) tokens of the
// text tokenised without BOS; every text token is a target.
//
// Tolerance: 0.02 nats absolute. Measured (tests/engine/quality_probe_test.cc; the table is in
// docs/ARCHITECTURE.md, The control plane): on SmolLM2-135M the probe's f16, int8 and int4 KV
// caches differ from fp32 by at most 0.0034 nats, and on stories260K by less; one wrongly
// shared layer moves it by 0.34-0.43. 0.02 leaves room for device arithmetic (a GPU's
// reduction order) without letting a wrong plan through.
//
// QualityProbe owns an engine; not thread-safe (callers serialise Measure).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/tokenizer/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/kv_type.h"

namespace kvshare {

extern const char kQualityProbeText[];
constexpr int kQualityProbeTokens = 256;
constexpr double kQualityProbeToleranceNats = 0.02;

// BOS (when any) then the probe's text tokens, as described above. InvalidArgument when the
// text gives fewer than 2 tokens or the model's context is under 2.
absl::StatusOr<std::vector<int32_t>> QualityProbeIds(const Tokenizer& tokenizer,
                                                     const ModelConfig& config);

struct QualityProbeResult {
  double mean_nll = 0;  // nats per target token
  int64_t tokens = 0;   // targets scored
  double seconds = 0;   // wall time of the measurement
};

class QualityProbe {
 public:
  // An engine of its own on `backend` storing K/V as `kv_type`, sized for one probe window.
  // `model` and `tokenizer` must outlive the probe.
  static absl::StatusOr<std::unique_ptr<QualityProbe>> Create(const Model& model,
                                                              const Tokenizer& tokenizer,
                                                              std::unique_ptr<Backend> backend,
                                                              KvType kv_type);
  // The probe under `strategy` (null: identity). FailedPrecondition/InvalidArgument from the
  // engine for a strategy of another model.
  absl::StatusOr<QualityProbeResult> Measure(std::shared_ptr<const SharingStrategy> strategy);

 private:
  QualityProbe(std::vector<int32_t> ids, std::unique_ptr<Engine> engine)
      : ids_(std::move(ids)), engine_(std::move(engine)) {}
  const std::vector<int32_t> ids_;
  const std::unique_ptr<Engine> engine_;
};

}  // namespace kvshare
