// Chat templates without a Jinja engine: a GGUF's tokenizer.chat_template is recognised by
// family and rendered natively. Supported: ChatML (the template writes "<|im_start|>"), e.g.
// SmolLM2-Instruct's:
//   [<|im_start|>system\n{default system prompt}<|im_end|>\n   when messages[0] is not system]
//   <|im_start|>{role}\n{content}<|im_end|>\n                 for each message
//   <|im_start|>assistant\n                                    with add_generation_prompt
// The default system prompt is read out of the template text, so ChatML templates that differ
// only in it (or have none) render correctly.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

class ChatTemplate {
 public:
  // Unimplemented naming the template's first 60 characters when it is not a known family.
  static absl::StatusOr<ChatTemplate> FromJinja(std::string_view jinja);

  std::string Apply(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  // The system prompt inserted when the conversation has none, if the template has one.
  const std::optional<std::string>& default_system_prompt() const { return default_system_; }

 private:
  std::optional<std::string> default_system_;
};

}  // namespace kvshare
