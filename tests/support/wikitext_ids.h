// The WikiText-2 test text as token ids of a real model: what the SmolLM2 engine tests score.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/model/model.h"

namespace kvshare::testing {

// The ids of the text's first `chars` characters under `model`'s own tokenizer (BOS first when
// add_bos), cut to `count`. Fails the calling test when the tokenizer does not load or the text
// gives fewer than `count` ids (and returns those it has).
std::vector<int32_t> WikiTextIds(const Model& model, size_t chars, bool add_bos, size_t count);

}  // namespace kvshare::testing
