// int4a's query weights (kernels/kv_type.h): attention reads a K channel only through q . k, so
// its rounding error costs in proportion to E[q_c^2] summed over the query heads that read its
// KV head. int4a spends a block's K bits where that weight times the channel's range is largest.
//
// Measured, not configured: for every layer and K channel, the mean of q_c^2 (post-RoPE, summed
// over the query heads of the channel's KV head) over the quality probe's fixed text
// (common/engine/quality_probe.h: BOS and its first 256 tokens), with an exact fp32 cache on
// the CPU backend. The search service and every worker compute the same numbers from the same
// model, so a plan's int4a layers store the same bits wherever they run. On SmolLM2 weights from
// this text did as well as weights from 2,048 WikiText-2 calibration tokens (docs/METHOD.md §6).
// One forward pass over ~257 tokens on an engine of its own (the model's weights are prepared
// for it once more: about a second for the models this project serves).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

struct QueryWeights {
  std::vector<std::vector<float>> layers;  // [n_layers][kv_dim]
};

// The weights of `model`, measured as above with `threads` CPU threads (the result does not
// depend on the count). Errors from tokenising the probe text or running the model.
absl::StatusOr<std::shared_ptr<const QueryWeights>> MeasureQueryWeights(const Model& model,
                                                                        const Tokenizer& tokenizer,
                                                                        int threads);

// The weights of `model` with its own tokenizer (LoadTokenizerForModel(model, "")), measured
// on 2 threads once per process and model fingerprint (the engine and the search's simulation
// share them). FailedPrecondition when the model has no tokenizer to find.
absl::StatusOr<std::shared_ptr<const QueryWeights>> QueryWeightsOf(const Model& model);

}  // namespace kvshare
