// A model's fingerprint: hex SHA-256 over a canonical serialisation of what determines its
// outputs, so it is independent of the path, of metadata and its order, of tensor order and
// padding in the file, and of the file format itself.
//
// Two versions exist. A fingerprint is 64 hex digits either way (it names registry
// directories); which version a strategy was bound to is found by recomputing v1 for the model
// at hand (Model::fingerprint_v1(), cheap: v2 is built on the v1 digest).
//
// v1 (config and weights; all integers little-endian; tests/reference/fingerprint.py
// implements the same independently):
//   str(s)  = u64 byte length, then the bytes
//   str("kvshare-model-fingerprint-v1")
//   str(architecture)
//   i64 dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size, max_seq_len
//   u32 bits of rope_theta (f32), u32 bits of norm_eps (f32), u8 tied_output
//   u64 number of tensors, then per tensor in CanonicalTensorSpecs order
//     (token_embd; per layer attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
//      ffn_gate, ffn_up, ffn_down; output_norm; output unless tied):
//     str(canonical name, e.g. "blk.3.attn_q"), u32 GGML type id, u32 n_dims, i64 per dim,
//     u64 byte count, the bytes.
//
// v2 (current: v1 plus the tokenizer, which changes outputs as surely as a weight does):
//   str("kvshare-model-fingerprint-v2"), str(v1 hex digest), then one of
//   - GGUF: u8 1, u64 number of metadata keys starting "tokenizer." (vocabulary, scores, token
//     types, merges, special token ids, add_bos/eos, pre-tokenizer, model type, chat
//     template), then per key in byte order: str(key), value; where value = u32 GGUF type id,
//     then i64 (every integer type but U64), u64 (U64), u64 bits of the value widened to f64
//     (F32/F64), u8 (bool), str (string), or u32 element type, u64 count and each element's
//     value (array);
//   - a llama2.c tokenizer file (tok512.bin: vocabulary, scores, max token length): u8 2,
//     str(the file's bytes);
//   - no tokenizer (a llama2.c checkpoint loaded without one): u8 0.
// Internal to common/model; Model::fingerprint() is the public face.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/gguf.h"
#include "common/model/model.h"

namespace kvshare {

inline constexpr int kModelFingerprintVersion = 2;

// v1. `config` must be valid and `weights` filled for it.
absl::StatusOr<std::string> ComputeModelFingerprintV1(const ModelConfig& config,
                                                      const ModelWeights& weights);

// The tokenizer a v2 fingerprint covers: a GGUF file's metadata, a llama2.c tokenizer file's
// bytes, or neither.
struct FingerprintedTokenizer {
  const GgufFile* gguf = nullptr;
  std::optional<std::string> llama2c_file;
};

// v2 from the v1 digest and the tokenizer.
absl::StatusOr<std::string> ComputeModelFingerprintV2(const std::string& fingerprint_v1,
                                                      const FingerprintedTokenizer& tokenizer);

}  // namespace kvshare
