#include "common/tokenizer/vocab_table_tokenizer.h"

namespace kvshare {

bool VocabTableTokenizer::IsControlToken(int32_t id) const {
  return id >= 0 && id < vocab_size() && control_[id];
}

std::string VocabTableTokenizer::TokenText(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return tokens_[id];
}

bool VocabTableTokenizer::IsEndOfGeneration(int32_t id) const {
  return id >= 0 && id < vocab_size() && end_of_generation_[id];
}

absl::StatusOr<std::string> VocabTableTokenizer::ApplyChatTemplate(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (!chat_template_.ok()) return chat_template_.status();
  return chat_template_->Apply(messages, add_generation_prompt);
}

}  // namespace kvshare
