// Loader for llama2.c checkpoints (the legacy "v0" export of run.c), e.g. stories260K.bin.
//
// Layout: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; a negative vocab_size means an untied classifier is stored at the end), then fp32
// arrays: token_embedding [vocab][dim], rms_att [L][dim], wq [L][dim][dim],
// wk [L][kv_dim][dim], wv [L][kv_dim][dim], wo [L][dim][dim], rms_ffn [L][dim],
// w1 (gate) [L][hidden][dim], w2 (down) [L][dim][hidden], w3 (up) [L][hidden][dim],
// rms_final [dim], freq_cis_real and freq_cis_imag [seq_len][head_dim/2] (unused: the engine
// computes RoPE itself), then wcls [vocab][dim] when untied. Internal to common/model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/model/model.h"

namespace kvshare {

inline constexpr size_t kLlama2cHeaderBytes = 7 * sizeof(int32_t);

// Where a llama2.c checkpoint's tokenizer is looked for when none is given:
// <the model's directory>/tok<vocab_size>.bin.
std::string DefaultLlama2cTokenizerPath(const std::string& model_path, int vocab_size);

// The largest tokenizer file read (llama2.c's tok32000.bin is about 0.5 MB).
inline constexpr int64_t kMaxTokenizerFileBytes = 64 << 20;

// Fills `config` (all but `name`) and `weights` (F32 views into `data`) from a checkpoint of
// exactly `size` bytes. The format has no magic, so the header must be plausible and the size
// must equal what it implies; otherwise InvalidArgument says which field or size is wrong.
// `data` must be 4-byte aligned and outlive `weights`.
absl::Status LoadLlama2c(const uint8_t* data, size_t size, ModelConfig* config,
                         ModelWeights* weights);

}  // namespace kvshare
