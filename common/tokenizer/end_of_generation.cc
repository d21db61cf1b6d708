#include "common/tokenizer/end_of_generation.h"

#include <algorithm>
#include <iterator>

namespace kvshare {
namespace {

// llama.cpp's list (llama-vocab.cpp, special_eog_ids), less the tokens of formats it special-
// cases further (gpt-oss's <|return|>/<|call|>, Gemma 4's, MiniMax's).
constexpr std::string_view kTexts[] = {"<|eot_id|>",
                                       "<|im_end|>",
                                       "<|end|>",
                                       "<end_of_turn>",
                                       "<|endoftext|>",
                                       "</s>",
                                       "<|eom_id|>",
                                       "<EOT>",
                                       "_<EOT>",
                                       "[EOT]",
                                       "[EOS]",
                                       "<|end_of_text|>",
                                       "<end_of_utterance>"};

}  // namespace

bool IsEndOfGenerationText(std::string_view text) {
  return std::find(std::begin(kTexts), std::end(kTexts), text) != std::end(kTexts);
}

}  // namespace kvshare
