// Binds a parsed GGUF file with general.architecture == "gemma3" to a ModelConfig and
// ModelWeights. Internal to common/model.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/model/gguf.h"
#include "common/model/model.h"

namespace kvshare {

// Fills `config` (all but `name`) from the gemma3.* keys and `weights` with views into
// `file_data`, except the Q/K rows and q/k norms, which are copied into `synthesized` permuted
// from llama.cpp's NEOX RoPE layout to adjacent pairs (model.h). Sliding-window layers follow
// gemma3.attention.sliding_window_pattern when present, else llama.cpp's default for gemma3
// (layer l is local unless l % 6 == 5); their RoPE base is gemma3.rope.freq_base_swa, default
// 10000. What the engine does not implement (RoPE scaling, logit soft-capping, partial rotary)
// is UNIMPLEMENTED naming the key; a missing key or tensor is InvalidArgument naming it.
absl::Status LoadGemma3FromGguf(const GgufFile& gguf, const uint8_t* file_data, ModelConfig* config,
                                ModelWeights* weights,
                                std::vector<std::vector<uint8_t>>* synthesized);

}  // namespace kvshare
