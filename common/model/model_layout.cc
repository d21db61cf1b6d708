#include "common/model/model_layout.h"

#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvshare {
namespace {

// Far above any Llama-family model today, and low enough that products of them (e.g.
// n_layers * hidden_dim * dim floats) fit comfortably in int64.
constexpr int kMaxDim = 1 << 16;
constexpr int kMaxHiddenDim = 1 << 18;
constexpr int kMaxLayers = 1 << 10;
constexpr int kMaxHeads = 1 << 10;
constexpr int kMaxVocab = 1 << 22;
constexpr int kMaxSeqLen = 1 << 24;

absl::Status CheckRange(const char* field, int64_t value, int64_t max) {
  if (value < 1 || value > max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s is %d, must be in [1, %d]", field, value, max));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelConfig(const ModelConfig& c) {
  for (auto [field, value, max] : {
           std::tuple<const char*, int64_t, int64_t>{"dim", c.dim, kMaxDim},
           {"hidden_dim", c.hidden_dim, kMaxHiddenDim},
           {"n_layers", c.n_layers, kMaxLayers},
           {"n_heads", c.n_heads, kMaxHeads},
           {"n_kv_heads", c.n_kv_heads, kMaxHeads},
           {"head_dim", c.head_dim, kMaxDim},
           {"vocab_size", c.vocab_size, kMaxVocab},
           {"max_seq_len", c.max_seq_len, kMaxSeqLen},
       }) {
    absl::Status st = CheckRange(field, value, max);
    if (!st.ok()) return st;
  }
  // Gemma 3 sets head_dim from its key_length: n_heads * head_dim need not be dim there.
  if (!c.IsGemma3() && int64_t{c.n_heads} * c.head_dim != c.dim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "dim %d is not n_heads %d * head_dim %d (dim must be a multiple of n_heads)", c.dim,
        c.n_heads, c.head_dim));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("n_heads %d is not a multiple of n_kv_heads %d", c.n_heads, c.n_kv_heads));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("head_dim %d is odd; RoPE rotates pairs of dimensions", c.head_dim));
  }
  if (c.sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sliding_window %d must be >= 0", c.sliding_window));
  }
  if (!c.local_layer.empty() && static_cast<int>(c.local_layer.size()) != c.n_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "local_layer has %d entries, expected n_layers %d", c.local_layer.size(), c.n_layers));
  }
  for (auto [field, value] : {std::pair<const char*, float>{"rope_theta_local", c.rope_theta_local},
                              {"embedding_scale", c.embedding_scale}}) {
    if (!std::isfinite(value) || value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s %g must be finite and positive", field, value));
    }
  }
  if (!std::isfinite(c.attention_scale) || c.attention_scale < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("attention_scale %g must be finite and >= 0", c.attention_scale));
  }
  if (!std::isfinite(c.rope_theta) || c.rope_theta <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rope_theta %g must be finite and positive", c.rope_theta));
  }
  if (!std::isfinite(c.norm_eps) || c.norm_eps <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("norm_eps %g must be finite and positive", c.norm_eps));
  }
  return absl::OkStatus();
}

std::vector<TensorSpec> CanonicalTensorSpecs(const ModelConfig& c) {
  const int64_t dim = c.dim, hidden = c.hidden_dim, vocab = c.vocab_size;
  const int64_t q_dim = int64_t{c.n_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_kv_heads} * c.head_dim;
  std::vector<TensorSpec> specs;
  specs.reserve(3 + c.n_layers * TensorsPerLayer(c));
  specs.push_back({"token_embd", {dim, vocab}, "cols dim, rows vocab_size", false});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    // Order must match LayerWeights and CanonicalTensor().
    specs.push_back({p + "attn_norm", {dim}, "dim", true});
    specs.push_back({p + "attn_q", {dim, q_dim}, "cols dim, rows n_heads*head_dim", false});
    specs.push_back({p + "attn_k", {dim, kv_dim}, "cols dim, rows n_kv_heads*head_dim", false});
    specs.push_back({p + "attn_v", {dim, kv_dim}, "cols dim, rows n_kv_heads*head_dim", false});
    specs.push_back({p + "attn_output", {q_dim, dim}, "cols n_heads*head_dim, rows dim", false});
    specs.push_back({p + "ffn_norm", {dim}, "dim", true});
    specs.push_back({p + "ffn_gate", {dim, hidden}, "cols dim, rows hidden_dim", false});
    specs.push_back({p + "ffn_up", {dim, hidden}, "cols dim, rows hidden_dim", false});
    specs.push_back({p + "ffn_down", {hidden, dim}, "cols hidden_dim, rows dim", false});
    if (c.IsGemma3()) {
      specs.push_back({p + "attn_q_norm", {c.head_dim}, "head_dim", true});
      specs.push_back({p + "attn_k_norm", {c.head_dim}, "head_dim", true});
      specs.push_back({p + "post_attention_norm", {dim}, "dim", true});
      specs.push_back({p + "post_ffw_norm", {dim}, "dim", true});
    }
  }
  specs.push_back({"output_norm", {dim}, "dim", true});
  if (!c.tied_output) {
    specs.push_back({"output", {dim, vocab}, "cols dim, rows vocab_size", false});
  }
  return specs;
}

int TensorsPerLayer(const ModelConfig& c) {
  return c.IsGemma3() ? kGemma3TensorsPerLayer : kTensorsPerLayer;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace kvshare
