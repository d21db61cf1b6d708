// libFuzzer target: a llama2.c tokenizer file (tok*.bin) through Llama2cTokenizer::FromBytes;
// the first two bytes choose the vocabulary size the model would ask for. A tokenizer that
// loads is used to encode and decode. (GGUF tokenizers are fuzzed through gguf_fuzz.)
#include <cstdint>
#include <string_view>

#include "common/tokenizer/llama2c_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int vocab_size = data[0] | (data[1] << 8);
  std::string_view bytes(reinterpret_cast<const char*>(data + 2), size - 2);
  auto tokenizer = kvshare::Llama2cTokenizer::FromBytes(bytes, vocab_size);
  if (tokenizer.ok()) kvshare::fuzz::ExerciseTokenizer(**tokenizer);
  return 0;
}
