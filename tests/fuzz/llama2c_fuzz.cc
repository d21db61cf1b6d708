// libFuzzer target: a llama2.c checkpoint's bytes through LoadLlama2c (header plausibility and
// the size the header implies).
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/model/llama2c.h"
#include "common/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // LoadLlama2c needs 4-byte alignment (F32 views): copy into float storage.
  std::vector<float> storage((size + sizeof(float) - 1) / sizeof(float));
  if (size > 0) std::memcpy(storage.data(), data, size);
  kvshare::ModelConfig config;
  kvshare::ModelWeights weights;
  (void)kvshare::LoadLlama2c(reinterpret_cast<const uint8_t*>(storage.data()), size, &config,
                             &weights);
  return 0;
}
