// libFuzzer target: a GGUF file's bytes through everything that reads them — the container
// (GgufFile::Parse), the Llama tensor mapping (LoadLlamaFromGguf) and the tokenizer in its
// metadata (TokenizerFromGguf), whose result is then used to encode and decode.
#include <cstdint>
#include <vector>

#include "common/model/gguf.h"
#include "common/model/gguf_llama.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Parse keeps views into the buffer; a heap copy also gives the 16-byte alignment mmap would.
  std::vector<uint8_t> bytes(data, data + size);
  absl::StatusOr<kvshare::GgufFile> gguf = kvshare::GgufFile::Parse(bytes.data(), bytes.size());
  if (!gguf.ok()) return 0;
  kvshare::ModelConfig config;
  kvshare::ModelWeights weights;
  (void)kvshare::LoadLlamaFromGguf(*gguf, bytes.data(), &config, &weights);
  absl::StatusOr<std::unique_ptr<kvshare::Tokenizer>> tokenizer = kvshare::TokenizerFromGguf(*gguf);
  if (tokenizer.ok()) kvshare::fuzz::ExerciseTokenizer(**tokenizer);
  return 0;
}
