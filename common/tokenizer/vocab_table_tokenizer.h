// What the GGUF-metadata tokenizers (byte-level BPE, SentencePiece) hold per token and answer
// the same way: the vocabulary text, the bytes each token decodes to, which tokens are control
// and which end generation, the special ids and the chat template. Each subclass fills these in
// its Create and supplies Encode and DecodeToken.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

class VocabTableTokenizer : public Tokenizer {
 public:
  bool IsControlToken(int32_t id) const override;
  std::string TokenText(int32_t id) const override;
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool add_bos_by_default() const override { return add_bos_; }
  bool IsEndOfGeneration(int32_t id) const override;
  absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const override;

 protected:
  std::vector<std::string> tokens_;         // the vocabulary as stored
  std::vector<std::string> decoded_;        // bytes per token; "" for control tokens
  std::vector<uint8_t> control_;            // per token
  std::vector<uint8_t> end_of_generation_;  // per token
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool add_bos_ = false;
  absl::StatusOr<ChatTemplate> chat_template_ =
      absl::UnimplementedError("model has no chat template");
};

}  // namespace kvshare
