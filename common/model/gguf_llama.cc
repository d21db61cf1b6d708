#include "common/model/gguf_llama.h"

#include <algorithm>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/model_layout.h"

namespace kvshare {

absl::Status ReadGgufInt(const GgufFile& f, const std::string& key, int* out, const int* fallback) {
  absl::StatusOr<int64_t> v = f.GetInt(key);
  if (absl::IsNotFound(v.status()) && fallback != nullptr) {
    *out = *fallback;
    return absl::OkStatus();
  }
  if (!v.ok()) return v.status();
  if (*v < 0 || *v > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GGUF: metadata key '%s' is %d, out of range", key, *v));
  }
  *out = static_cast<int>(*v);
  return absl::OkStatus();
}

absl::Status ReadGgufFloat(const GgufFile& f, const std::string& key, float* out,
                           const float* fallback) {
  absl::StatusOr<double> v = f.GetFloat(key);
  if (absl::IsNotFound(v.status()) && fallback != nullptr) {
    *out = *fallback;
    return absl::OkStatus();
  }
  if (!v.ok()) return v.status();
  *out = static_cast<float>(*v);
  return absl::OkStatus();
}

namespace {

absl::Status ReadConfig(const GgufFile& f, ModelConfig* c) {
  absl::StatusOr<std::string> arch = f.GetString("general.architecture");
  if (!arch.ok()) return arch.status();
  if (*arch != "llama") {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF: general.architecture is '%s'; only 'llama' is supported, and 'gemma3'", *arch));
  }
  c->architecture = *arch;
  absl::Status st;
  auto read = [&](const char* key, int* out, const int* fallback = nullptr) {
    if (st.ok()) st = ReadGgufInt(f, key, out, fallback);
  };
  read("llama.block_count", &c->n_layers);
  read("llama.embedding_length", &c->dim);
  read("llama.feed_forward_length", &c->hidden_dim);
  read("llama.attention.head_count", &c->n_heads);
  read("llama.attention.head_count_kv", &c->n_kv_heads, &c->n_heads);  // no GQA when absent
  read("llama.context_length", &c->max_seq_len);
  if (!st.ok()) return st;
  const float kDefaultTheta = 10000.0f;  // llama.cpp's default for llama
  st = ReadGgufFloat(f, "llama.rope.freq_base", &c->rope_theta, &kDefaultTheta);
  if (!st.ok()) return st;
  st = ReadGgufFloat(f, "llama.attention.layer_norm_rms_epsilon", &c->norm_eps);
  if (!st.ok()) return st;

  // vocab_size is optional in llama GGUFs; the tokenizer's token list then defines it.
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  const auto* token_list = tokens ? std::get_if<std::vector<GgufValue>>(&tokens->value) : nullptr;
  if (f.Find("llama.vocab_size") != nullptr) {
    st = ReadGgufInt(f, "llama.vocab_size", &c->vocab_size);
    if (!st.ok()) return st;
  } else if (token_list != nullptr) {
    c->vocab_size = static_cast<int>(std::min<size_t>(token_list->size(), INT32_MAX));
  } else {
    return absl::InvalidArgumentError(
        "GGUF: neither llama.vocab_size nor tokenizer.ggml.tokens gives the vocabulary size");
  }
  // A tokenizer with more tokens than embedding rows could emit ids the model cannot embed.
  if (token_list != nullptr && token_list->size() > static_cast<size_t>(c->vocab_size)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GGUF: tokenizer.ggml.tokens has %d tokens, more than vocab_size %d",
                        token_list->size(), c->vocab_size));
  }
  c->head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
  if (st = ValidateModelConfig(*c); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: llama config: ", st.message()));
  }

  // Features of some llama-architecture files that the engine does not implement; loading
  // them anyway would give wrong logits silently.
  if (f.Find("llama.rope.scaling.type") != nullptr) {
    absl::StatusOr<std::string> scaling = f.GetString("llama.rope.scaling.type");
    if (!scaling.ok()) return scaling.status();
    if (*scaling != "none") {
      return absl::UnimplementedError(
          absl::StrFormat("GGUF: llama.rope.scaling.type '%s' is not supported", *scaling));
    }
  }
  for (const char* key : {"llama.rope.dimension_count", "llama.attention.key_length",
                          "llama.attention.value_length"}) {
    if (f.Find(key) == nullptr) continue;
    int value = 0;
    if (st = ReadGgufInt(f, key, &value); !st.ok()) return st;
    if (value != c->head_dim) {
      return absl::UnimplementedError(absl::StrFormat(
          "GGUF: %s is %d but head_dim (embedding_length / head_count) is %d; only full "
          "rotary embeddings over dim / n_heads are supported",
          key, value, c->head_dim));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status BindCanonicalTensors(const GgufFile& gguf, const uint8_t* file_data,
                                  const ModelConfig& c, ModelWeights* weights) {
  ModelWeights w;
  w.tensors_per_layer = TensorsPerLayer(c);
  w.layers.resize(c.n_layers);
  const std::vector<TensorSpec> specs = CanonicalTensorSpecs(c);
  std::set<std::string> expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const std::string name = spec.name + ".weight";
    expected.insert(name);
    const GgufTensorInfo* info = gguf.FindTensor(name);
    if (info == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: tensor %s is missing (expected shape %s: %s)", name,
                          ShapeString(spec.shape), spec.meaning));
    }
    if (info->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrFormat("GGUF: %s has shape %s, expected %s (%s)",
                                                        name, ShapeString(info->shape),
                                                        ShapeString(spec.shape), spec.meaning));
    }
    if (spec.f32_only && info->type != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrFormat("GGUF: %s has type %s, expected F32", name,
                                                        GetDTypeInfo(info->type).name));
    }
    // Llama Q/K rows need no permutation: the GGUF converter already permuted the HF rows so
    // RoPE rotates adjacent pairs (2i, 2i+1) of each head, as llama2.c checkpoints do (Gemma 3's
    // loader permutes its rows after binding).
    CanonicalTensor(w, i) = gguf.TensorView(*info, file_data);
  }
  if (c.tied_output) w.output = w.token_embedding;
  for (const GgufTensorInfo& t : gguf.tensors()) {
    if (expected.count(t.name) == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF: tensor %s is not part of a %s model with %d layers (unsupported variant?)", t.name,
          c.architecture, c.n_layers));
    }
  }
  *weights = std::move(w);
  return absl::OkStatus();
}

absl::Status LoadLlamaFromGguf(const GgufFile& gguf, const uint8_t* file_data, ModelConfig* config,
                               ModelWeights* weights) {
  ModelConfig c;
  if (absl::Status st = ReadConfig(gguf, &c); !st.ok()) return st;
  // No output.weight means the classifier reuses the embedding (SmolLM2 does this).
  c.tied_output = gguf.FindTensor("output.weight") == nullptr;

  ModelWeights w;
  if (absl::Status st = BindCanonicalTensors(gguf, file_data, c, &w); !st.ok()) return st;
  *config = std::move(c);
  *weights = std::move(w);
  return absl::OkStatus();
}

}  // namespace kvshare
