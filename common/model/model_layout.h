// The canonical list of a Llama model's weights: names, expected shapes, and order.
//
// One list serves the loaders (which tensors a file must hold and in what shape), the
// fingerprint (which bytes are hashed, in what order) and parameter_count(), so the three
// cannot disagree. Internal to common/model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/model/model.h"

namespace kvshare {

// Checks every field a loader fills before any size or shape is computed from it: positive,
// below sane upper bounds (so later products cannot overflow), dim == n_heads * head_dim,
// n_heads a multiple of n_kv_heads, head_dim even (RoPE rotates pairs), finite positive
// rope_theta and norm_eps. InvalidArgument names the field, its value and the limit.
absl::Status ValidateModelConfig(const ModelConfig& c);

struct TensorSpec {
  std::string name;            // canonical: "token_embd", "blk.3.attn_q", "output_norm", "output"
  std::vector<int64_t> shape;  // expected shape, GGML order {cols, rows}
  std::string meaning;         // the shape in config terms, for messages
  bool f32_only = false;       // norms are applied in fp32 and must be stored as F32
};

// Per-layer tensors in LayerWeights order: a Llama layer's, and a Gemma 3 layer's (the same
// nine, then its four extra norms).
inline constexpr int kTensorsPerLayer = 9;
inline constexpr int kGemma3TensorsPerLayer = 13;
int TensorsPerLayer(const ModelConfig& c);

// Every distinct tensor of a model with config `c`, in canonical order: token_embd; for each
// layer attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down
// (Gemma 3: then attn_q_norm, attn_k_norm, post_attention_norm, post_ffw_norm); output_norm;
// and output unless the output is tied to the embedding. `c` must be valid.
std::vector<TensorSpec> CanonicalTensorSpecs(const ModelConfig& c);

// The tensor of `w` that entry `i` of CanonicalTensorSpecs describes. `w.layers` must hold
// n_layers entries and w.tensors_per_layer be TensorsPerLayer(config). W is ModelWeights or
// const ModelWeights.
template <typename W>
auto& CanonicalTensor(W& w, size_t i) {
  if (i == 0) return w.token_embedding;
  --i;
  const size_t per_layer = static_cast<size_t>(w.tensors_per_layer);
  const size_t layer_tensors = w.layers.size() * per_layer;
  if (i < layer_tensors) {
    auto& l = w.layers[i / per_layer];
    switch (i % per_layer) {
      case 0:
        return l.attn_norm;
      case 1:
        return l.wq;
      case 2:
        return l.wk;
      case 3:
        return l.wv;
      case 4:
        return l.wo;
      case 5:
        return l.ffn_norm;
      case 6:
        return l.w_gate;
      case 7:
        return l.w_up;
      case 8:
        return l.w_down;
      case 9:
        return l.q_norm;
      case 10:
        return l.k_norm;
      case 11:
        return l.post_attn_norm;
      default:
        return l.post_ffn_norm;
    }
  }
  return i == layer_tensors ? w.output_norm : w.output;
}

// "[576, 192]".
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace kvshare
