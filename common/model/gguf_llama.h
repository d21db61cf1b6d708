// Binds a parsed GGUF file with general.architecture == "llama" to a ModelConfig and
// ModelWeights. Internal to common/model.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/model/gguf.h"
#include "common/model/model.h"

namespace kvshare {

// Fills `config` (all but `name`) from the llama.* keys and `weights` with views into
// `file_data` (the buffer `gguf` was parsed from). Every expected tensor must be present with
// the shape the config implies (norms in F32); a missing, misshapen or unexpected tensor, a
// missing key or an unsupported feature (RoPE scaling, partial rotary) is an error naming it.
absl::Status LoadLlamaFromGguf(const GgufFile& gguf, const uint8_t* file_data, ModelConfig* config,
                               ModelWeights* weights);

}  // namespace kvshare
