// Binds a parsed GGUF file with general.architecture == "llama" to a ModelConfig and
// ModelWeights. Internal to common/model.
#pragma once

#include <cstdint>
#include <string>

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

// Shared by the architecture loaders (gguf_gemma3.cc).
// Reads an integer key into an int; `fallback` (when given) is used when the key is absent.
// InvalidArgument names a key whose value does not fit an int >= 0.
absl::Status ReadGgufInt(const GgufFile& f, const std::string& key, int* out,
                         const int* fallback = nullptr);
absl::Status ReadGgufFloat(const GgufFile& f, const std::string& key, float* out,
                           const float* fallback = nullptr);
// Binds every tensor CanonicalTensorSpecs(c) names ("<name>.weight") to a view into
// `file_data`, checking shapes and that norms are F32, and sets the tied output; a missing or
// misshapen tensor, or one the list does not name, is InvalidArgument naming it.
absl::Status BindCanonicalTensors(const GgufFile& gguf, const uint8_t* file_data,
                                  const ModelConfig& c, ModelWeights* weights);

}  // namespace kvshare
