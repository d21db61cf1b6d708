// What every fuzz target does with a parser's result: use it the way the engine would, so a
// parse that "succeeds" on garbage still has to be safe to consume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"

namespace kvshare::fuzz {

// Encodes and decodes a few texts (ASCII, multi-byte UTF-8, specials, empty) and decodes every
// id around the vocabulary's edges: none of it may crash or read out of bounds.
inline void ExerciseTokenizer(const Tokenizer& tokenizer) {
  for (const char* text : {"", "Hello, world 123", "h\xc3\xa9llo \xe2\x82\xac\xf0\x9f\x98\x80",
                           "<|im_start|>user\n hi<|im_end|>", "  \n\t  ", "\xff\xfe\x80"}) {
    std::vector<int32_t> ids = tokenizer.Encode(text, /*add_bos=*/true);
    (void)tokenizer.Decode(ids);
  }
  const int32_t n = tokenizer.vocab_size();
  for (int32_t id : {-1, 0, 1, 2, 3, n / 2, n - 1, n, n + 1}) {
    (void)tokenizer.DecodeToken(-1, id);
    (void)tokenizer.TokenText(id);
    (void)tokenizer.IsControlToken(id);
    (void)tokenizer.IsEndOfGeneration(id);
  }
}

}  // namespace kvshare::fuzz
