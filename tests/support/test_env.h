// Paths to real model files and data for tests. Missing files fail the test (they do not
// skip): the setup installs the model and CI has ../shared/assets beside the checkout.
#pragma once

#include <string>

namespace kvshare::testing {

// Absolute path of a file in the shared assets folder, e.g. "stories260K.bin".
std::string Asset(const std::string& file);
// The SmolLM2-135M-Instruct Q4_1 GGUF.
std::string SmolLm2Path();
// A file under the source tree, e.g. "tests/reference/smollm2_logits.json".
std::string SourcePath(const std::string& relative);
// A file made by tests/reference/make_test_models.sh (K-quant re-quantisations of SmolLM2,
// llama.cpp's vocabulary GGUFs, the Gemma 3 GGUF), in $KVSHARE_TEST_MODELS (default
// ~/.cache/kvshare/models); "" when it is not there (the caller skips, saying why).
std::string TestModel(const std::string& file);
// The skip message for a missing TestModel.
std::string TestModelMissing(const std::string& file);
// The bytes of a file.
std::string ReadFileOrDie(const std::string& path);

}  // namespace kvshare::testing
