#include "common/model/gguf_gemma3.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/gguf_llama.h"
#include "common/model/model_layout.h"

namespace kvshare {
namespace {

constexpr int kDefaultSwaPattern = 6;  // llama.cpp's gemma3 default: every 6th layer global

absl::Status ReadLocalLayers(const GgufFile& f, ModelConfig* c) {
  c->local_layer.assign(c->n_layers, 0);
  if (c->sliding_window == 0) return absl::OkStatus();
  const std::string key = "gemma3.attention.sliding_window_pattern";
  const GgufValue* v = f.Find(key);
  if (v != nullptr && std::holds_alternative<std::vector<GgufValue>>(v->value)) {
    // One flag per layer (llama.cpp reads it as an array of bools).
    const auto& flags = std::get<std::vector<GgufValue>>(v->value);
    if (static_cast<int>(flags.size()) != c->n_layers) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF: %s has %d entries, expected block_count %d", key, flags.size(), c->n_layers));
    }
    for (int l = 0; l < c->n_layers; ++l) {
      const bool* b = std::get_if<bool>(&flags[l].value);
      if (b == nullptr) {
        return absl::InvalidArgumentError(absl::StrFormat("GGUF: %s[%d] is not a bool", key, l));
      }
      c->local_layer[l] = *b ? 1 : 0;
    }
    return absl::OkStatus();
  }
  int pattern = kDefaultSwaPattern;
  if (absl::Status st = ReadGgufInt(f, key, &pattern, &kDefaultSwaPattern); !st.ok()) return st;
  // llama.cpp's set_swa_pattern: pattern 0 makes every layer local.
  for (int l = 0; l < c->n_layers; ++l) {
    c->local_layer[l] = (pattern == 0 || l % pattern < pattern - 1) ? 1 : 0;
  }
  return absl::OkStatus();
}

absl::Status ReadConfig(const GgufFile& f, ModelConfig* c) {
  c->architecture = "gemma3";
  absl::Status st;
  auto read = [&](const char* key, int* out, const int* fallback = nullptr) {
    if (st.ok()) st = ReadGgufInt(f, key, out, fallback);
  };
  read("gemma3.block_count", &c->n_layers);
  read("gemma3.embedding_length", &c->dim);
  read("gemma3.feed_forward_length", &c->hidden_dim);
  read("gemma3.attention.head_count", &c->n_heads);
  read("gemma3.attention.head_count_kv", &c->n_kv_heads, &c->n_heads);
  read("gemma3.context_length", &c->max_seq_len);
  if (!st.ok()) return st;
  const int default_head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
  read("gemma3.attention.key_length", &c->head_dim, &default_head_dim);
  int value_length = 0;
  read("gemma3.attention.value_length", &value_length, &c->head_dim);
  const int kNoWindow = 0;
  read("gemma3.attention.sliding_window", &c->sliding_window, &kNoWindow);
  if (!st.ok()) return st;
  if (value_length != c->head_dim) {
    return absl::UnimplementedError(absl::StrFormat(
        "GGUF: gemma3.attention.value_length %d differs from key_length %d; not supported",
        value_length, c->head_dim));
  }
  const float kDefaultTheta = 10000.0f;
  st = ReadGgufFloat(f, "gemma3.rope.freq_base", &c->rope_theta, &kDefaultTheta);
  if (st.ok())
    st = ReadGgufFloat(f, "gemma3.rope.freq_base_swa", &c->rope_theta_local, &kDefaultTheta);
  if (st.ok()) st = ReadGgufFloat(f, "gemma3.attention.layer_norm_rms_epsilon", &c->norm_eps);
  if (!st.ok()) return st;

  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  const auto* token_list = tokens ? std::get_if<std::vector<GgufValue>>(&tokens->value) : nullptr;
  if (f.Find("gemma3.vocab_size") != nullptr) {
    if (st = ReadGgufInt(f, "gemma3.vocab_size", &c->vocab_size); !st.ok()) return st;
  } else if (token_list != nullptr) {
    c->vocab_size = static_cast<int>(std::min<size_t>(token_list->size(), INT32_MAX));
  } else {
    return absl::InvalidArgumentError(
        "GGUF: neither gemma3.vocab_size nor tokenizer.ggml.tokens gives the vocabulary size");
  }
  if (st = ReadLocalLayers(f, c); !st.ok()) return st;
  // Gemma scales the embedding by sqrt(dim) (llama.cpp: sqrtf(n_embd), in fp32) and queries by
  // 1/sqrt(head_dim), except the 27B (62 layers), whose query_pre_attn_scalar is dim / n_heads.
  c->embedding_scale = std::sqrt(static_cast<float>(c->dim));
  const float scale_dim = c->n_layers == 62 ? static_cast<float>(c->dim / std::max(c->n_heads, 1))
                                            : static_cast<float>(c->head_dim);
  c->attention_scale = 1.0f / std::sqrt(scale_dim);
  if (st = ValidateModelConfig(*c); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: gemma3 config: ", st.message()));
  }

  // What the engine does not implement would give wrong logits silently.
  if (f.Find("gemma3.rope.scaling.type") != nullptr) {
    absl::StatusOr<std::string> scaling = f.GetString("gemma3.rope.scaling.type");
    if (!scaling.ok()) return scaling.status();
    if (*scaling != "none") {
      return absl::UnimplementedError(
          absl::StrFormat("GGUF: gemma3.rope.scaling.type '%s' is not supported", *scaling));
    }
  }
  for (const char* key : {"gemma3.final_logit_softcapping", "gemma3.attn_logit_softcapping"}) {
    if (f.Find(key) == nullptr) continue;
    float cap = 0;
    if (st = ReadGgufFloat(f, key, &cap); !st.ok()) return st;
    if (cap != 0) {
      return absl::UnimplementedError(
          absl::StrFormat("GGUF: %s is %g; logit soft-capping is not supported", key, cap));
    }
  }
  if (f.Find("gemma3.rope.dimension_count") != nullptr) {
    int n_rot = 0;
    if (st = ReadGgufInt(f, "gemma3.rope.dimension_count", &n_rot); !st.ok()) return st;
    if (n_rot != c->head_dim) {
      return absl::UnimplementedError(absl::StrFormat(
          "GGUF: gemma3.rope.dimension_count is %d but head_dim is %d; only full rotary "
          "embeddings are supported",
          n_rot, c->head_dim));
    }
  }
  return absl::OkStatus();
}

// A copy of `t` whose rows, within each group of head_dim rows, go from the NEOX order (pairs
// (i, i + head_dim/2)) to adjacent pairs: new row 2i = old row i, new row 2i+1 = old row
// i + head_dim/2. A 1-D tensor (a norm over head_dim) is permuted element-wise.
Tensor PermuteHeadRows(const Tensor& t, int head_dim, std::vector<std::vector<uint8_t>>* store) {
  const bool vector = t.shape.size() == 1;
  const int64_t rows = vector ? t.cols() : t.rows();
  const size_t row_bytes = vector ? 4 : t.nbytes / static_cast<size_t>(rows);
  std::vector<uint8_t>& out = store->emplace_back(t.nbytes);
  const uint8_t* src = static_cast<const uint8_t*>(t.data);
  const int half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t head = r / head_dim, j = r % head_dim;
    const int64_t to = head * head_dim + (j < half ? 2 * j : 2 * (j - half) + 1);
    std::memcpy(out.data() + to * row_bytes, src + r * row_bytes, row_bytes);
  }
  Tensor p = t;
  p.data = out.data();
  return p;
}

}  // namespace

absl::Status LoadGemma3FromGguf(const GgufFile& gguf, const uint8_t* file_data, ModelConfig* config,
                                ModelWeights* weights,
                                std::vector<std::vector<uint8_t>>* synthesized) {
  ModelConfig c;
  if (absl::Status st = ReadConfig(gguf, &c); !st.ok()) return st;
  c.tied_output = gguf.FindTensor("output.weight") == nullptr;
  ModelWeights w;
  if (absl::Status st = BindCanonicalTensors(gguf, file_data, c, &w); !st.ok()) return st;
  std::vector<std::vector<uint8_t>> store;
  for (LayerWeights& l : w.layers) {
    for (Tensor* t : {&l.wq, &l.wk, &l.q_norm, &l.k_norm}) {
      *t = PermuteHeadRows(*t, c.head_dim, &store);
    }
  }
  *config = std::move(c);
  *weights = std::move(w);
  for (auto& s : store) synthesized->push_back(std::move(s));
  return absl::OkStatus();
}

}  // namespace kvshare
