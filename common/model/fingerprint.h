// A model's fingerprint: hex SHA-256 over a canonical serialisation of what determines its
// outputs (config and weights), so it is independent of the path, of metadata and its order,
// of tensor order and padding in the file, and of the file format itself.
//
// Serialisation v1 (all integers little-endian; tests/reference/fingerprint.py implements the
// same independently):
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
// Internal to common/model; Model::fingerprint() is the public face.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/model/model.h"

namespace kvshare {

// `config` must be valid and `weights` filled for it.
absl::StatusOr<std::string> ComputeModelFingerprint(const ModelConfig& config,
                                                    const ModelWeights& weights);

}  // namespace kvshare
