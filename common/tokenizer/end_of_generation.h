// The texts of tokens that end a turn or a document in the chat formats in use. llama.cpp treats
// a token with one of these texts as a control token that ends generation whatever type the
// file gives it (e.g. Qwen2's "</s>" is a normal token in the file, Gemma 3's a user-defined
// one): the GGUF tokenizers do the same, so such a token written in the text is cut out as a
// special token and generation stops at it.
#pragma once

#include <string_view>

namespace kvshare {

bool IsEndOfGenerationText(std::string_view text);

}  // namespace kvshare
