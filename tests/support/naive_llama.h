// A deliberately naive Llama forward for tests: every position recomputed, no cache, double
// precision, fp32 weights only (stories260K). A sharing layer's K/V are its source layer's
// (docs/METHOD.md §1); a dropped layer adds nothing for attention (issue 18); a replacement output
// projection replaces the layer's W_o; a dropped layer's linear substitute adds
// M RMSNorm(x) + b instead. Independent of the engine and kernels it checks.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "common/model/model.h"
#include "kernels/kv_type.h"

namespace kvshare::testing {

using Vec = std::vector<double>;

struct NaiveRun {
  std::vector<Vec> final_hidden;  // [T][dim], after the final RMSNorm
  std::vector<Vec> logits;        // [T][vocab], when asked for
  // Post-RoPE keys and values, [layer][T][n_kv_heads * head_dim]; empty for sharing layers.
  std::vector<std::vector<Vec>> keys, values;
};

// What the reference forward runs: layer l attends over layer kv_source[l]'s K/V, except the
// layers in `dropped` (no attention at all), and uses wo[l] ([dim][n_heads * head_dim]
// row-major) instead of its W_o where given; a dropped layer in `substitutes` adds
// M h + b, h its normed attention input (M [dim][dim] row-major, b [dim]). With kv_types (one per
// layer; f32, f16 and int8 only — int4's block-wise groups depend on how a prompt is chunked), each
// owning layer's K/V are rounded as a pool of that type stores them.
struct NaiveStrategy {
  std::vector<int> kv_source;
  std::vector<int> dropped;
  std::map<int, std::vector<double>> wo;
  std::vector<KvType> kv_types;
  std::map<int, std::pair<std::vector<double>, std::vector<double>>> substitutes;
};

NaiveRun NaiveLlamaForward(const Model& m, const NaiveStrategy& strategy,
                           const std::vector<int32_t>& ids, bool with_logits);

// The forward of `ids` at positions 0..T-1 with layer l attending over layer kv_source[l]'s
// K/V.
inline NaiveRun NaiveLlamaForward(const Model& m, const std::vector<int>& kv_source,
                                  const std::vector<int32_t>& ids, bool with_logits) {
  return NaiveLlamaForward(m, NaiveStrategy{kv_source, {}, {}, {}, {}}, ids, with_logits);
}

// Logits [T][vocab] of NaiveLlamaForward.
inline std::vector<Vec> NaiveForward(const Model& m, const std::vector<int>& kv_source,
                                     const std::vector<int32_t>& ids) {
  return NaiveLlamaForward(m, kv_source, ids, /*with_logits=*/true).logits;
}

}  // namespace kvshare::testing
