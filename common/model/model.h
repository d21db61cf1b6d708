// A Llama-family model: its config, its weights (views into the loaded file, in their stored
// types), and a stable fingerprint. Two formats load behind this one API:
//   - llama2.c checkpoints (legacy v0 export: 7 int32 header, fp32 weights), e.g. stories260K;
//   - GGUF v3 with general.architecture == "llama" (e.g. SmolLM2-135M-Instruct Q4_1);
//   - GGUF v3 with general.architecture == "gemma3" (e.g. Gemma 3 270M): the Llama layers plus
//     QK-norm, post-attention and post-FFN norms, GeGLU, embeddings scaled by sqrt(dim) and
//     sliding-window ("local") attention on most layers (see ModelConfig's Gemma 3 fields).
//
// Q/K rows and RoPE: llama2.c checkpoints and llama GGUF files (whose converter permutes the
// HF Q/K rows) both rotate adjacent pairs (2i, 2i+1) of each head, so the engine uses one RoPE.
// Gemma 3 GGUFs rotate halves (i, i + head_dim/2) instead (llama.cpp's NEOX RoPE); the loader
// permutes their Q/K rows and q/k norm weights within each head (dimension i -> 2i,
// i + head_dim/2 -> 2i + 1) so the same RoPE applies. Q.K is unchanged by a permutation applied
// to both, and V is not permuted, so the attention output is the model's.
//
// Load errors are Status values naming the file, the field or tensor, and the offending value;
// a bad file never crashes the process or causes an out-of-bounds read.
// A Model is immutable after Load and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/gguf.h"
#include "kernels/tensor.h"

namespace kvshare {

struct ModelConfig {
  std::string architecture = "llama";
  std::string name;    // human-readable (file stem or general.name)
  int dim = 0;         // model width
  int hidden_dim = 0;  // FFN width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // dim / n_heads
  int vocab_size = 0;
  int max_seq_len = 0;  // context length
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tied_output = false;  // the classifier reuses the token embedding

  // Gemma 3 (architecture "gemma3"); the defaults describe a Llama model.
  // head_dim is gemma3.attention.key_length there, so n_heads * head_dim may differ from dim.
  int sliding_window = 0;             // > 0: local layers see only the last N positions
  std::vector<uint8_t> local_layer;   // per layer (empty: none): 1 = sliding-window attention
  float rope_theta_local = 10000.0f;  // RoPE base of local layers (rope_theta: global ones)
  float embedding_scale = 1.0f;       // the token embedding is multiplied by this (sqrt(dim))
  float attention_scale = 0.0f;       // score scale; 0: 1/sqrt(head_dim)

  bool IsGemma3() const { return architecture == "gemma3"; }
  // Whether `layer` uses sliding-window attention (never for Llama models).
  bool IsLocalLayer(int layer) const {
    return sliding_window > 0 && layer >= 0 && layer < static_cast<int>(local_layer.size()) &&
           local_layer[layer] != 0;
  }
  float LayerRopeTheta(int layer) const {
    return IsLocalLayer(layer) ? rope_theta_local : rope_theta;
  }
  // Whether `layer` may attend over `source`'s KV cache (source < layer) under KV sharing
  // (docs/METHOD.md §1, "Local and global layers"): always between layers of the same kind. A
  // global layer never reads a local (windowed) cache — a windowed cache may drop positions a
  // global layer needs. A local layer reads a global cache only where both kinds share one RoPE
  // base: its queries are rotated with its own base, the cached keys with the source's, and
  // across bases q.k stops depending on the relative position alone (Gemma 3: 1e4 vs 1e6).
  bool CanReadCacheOf(int layer, int source) const {
    const bool local = IsLocalLayer(layer), source_local = IsLocalLayer(source);
    if (local == source_local) return true;
    return local && rope_theta_local == rope_theta;
  }

  // fp32 K and V for every layer, per token (the unshared cache).
  int64_t KvBytesPerToken() const { return 2LL * n_layers * n_kv_heads * head_dim * 4; }
  std::string DebugString() const;
};

struct LayerWeights {
  Tensor attn_norm;  // [dim] f32
  Tensor wq;         // rows n_heads*head_dim, cols dim
  Tensor wk;         // rows n_kv_heads*head_dim, cols dim
  Tensor wv;         // rows n_kv_heads*head_dim, cols dim
  Tensor wo;         // rows dim, cols n_heads*head_dim
  Tensor ffn_norm;   // [dim] f32
  Tensor w_gate;     // rows hidden_dim, cols dim
  Tensor w_up;       // rows hidden_dim, cols dim
  Tensor w_down;     // rows dim, cols hidden_dim
  // Gemma 3 only (absent, data == nullptr, for Llama models): all f32.
  Tensor q_norm;          // [head_dim], applied to each query head before RoPE
  Tensor k_norm;          // [head_dim], applied to each key head before RoPE
  Tensor post_attn_norm;  // [dim], applied to att W_o before the residual add
  Tensor post_ffn_norm;   // [dim], applied to the FFN output before the residual add
};

struct ModelWeights {
  Tensor token_embedding;  // rows vocab_size, cols dim
  std::vector<LayerWeights> layers;
  Tensor output_norm;  // [dim] f32
  Tensor output;       // rows vocab_size, cols dim (== token_embedding when tied)
  // Tensors per layer in canonical order (model_layout.h): 9 for Llama, 13 for Gemma 3.
  int tensors_per_layer = 9;
};

enum class ModelFormat { kLlama2c, kGguf };

class Model {
 public:
  // Detects the format from the first bytes (GGUF magic, else llama2.c) and loads the file
  // (memory-mapped, read-only). A llama2.c checkpoint's tokenizer file, which the fingerprint
  // covers, is `tokenizer_path`, else tok<vocab>.bin beside the model when it exists, else none
  // (NotFound naming a given `tokenizer_path` that cannot be read). GGUF files carry their own
  // tokenizer; `tokenizer_path` is ignored for them (LoadTokenizerForModel refuses it).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& path,
                                                     const std::string& tokenizer_path = "");
  // Same from bytes in memory (tests use truncated and bit-flipped copies). Takes ownership.
  static absl::StatusOr<std::unique_ptr<Model>> FromBytes(std::vector<uint8_t> bytes,
                                                          const std::string& name);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  ModelFormat format() const { return format_; }
  const std::string& path() const { return path_; }
  // GGUF metadata (tokenizer, chat template); null for llama2.c checkpoints.
  const GgufFile* gguf() const { return gguf_.get(); }
  // Hex SHA-256 (fingerprint v2, common/model/fingerprint.h) over the canonical config, every
  // tensor's name, type, shape and bytes, and the tokenizer. Stable across loads, paths and
  // formats' incidental bytes (padding, metadata order).
  const std::string& fingerprint() const { return fingerprint_; }
  // The v1 fingerprint (config and weights only) that strategies bound before v2 carry.
  const std::string& fingerprint_v1() const { return fingerprint_v1_; }
  // llama2.c: the tokenizer file the fingerprint covers ("" when none); GGUF: "".
  const std::string& tokenizer_path() const { return tokenizer_path_; }
  // Hex SHA-256 of that file's bytes ("" when none).
  const std::string& tokenizer_sha256() const { return tokenizer_sha256_; }
  int64_t parameter_count() const;
  // Drops the pages wholly inside `t`'s bytes from this process's resident memory when they
  // belong to the model file's mapping: they stay in the page cache and fault back in if read
  // again (the mapping is private and read-only, so nothing is lost). For a tensor a backend
  // has copied (PreparedWeight::reads_source() false). A no-op for tensors outside the mapping
  // and for models held in memory.
  void ReleaseResidentPages(const Tensor& t) const;
  // The same for the pages of [begin, begin + bytes) from the page holding `begin` (which may
  // hold bytes before it) to the last page wholly inside: a caller releasing a tensor in
  // consecutive slices (backend.h SourceProgress) leaves no page behind but the last.
  void ReleaseResidentRange(const void* begin, size_t bytes) const;

 private:
  Model() = default;
  static absl::StatusOr<std::unique_ptr<Model>> FromStorage(std::unique_ptr<Model> m);
  // Reads a llama2.c model's tokenizer file (see Load) and folds it into the fingerprint.
  absl::Status BindLlama2cTokenizer(const std::string& tokenizer_path);

  std::string path_;
  ModelFormat format_ = ModelFormat::kGguf;
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<GgufFile> gguf_;
  std::string fingerprint_;
  std::string fingerprint_v1_;
  std::string tokenizer_path_;
  std::string tokenizer_sha256_;
  // Backing bytes: either a read-only mapping or an owned vector.
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;
  std::vector<uint8_t> owned_;
  // Weights synthesised at load (Gemma 3's Q/K rows and q/k norms permuted for the RoPE).
  std::vector<std::vector<uint8_t>> synthesized_;
};

}  // namespace kvshare
