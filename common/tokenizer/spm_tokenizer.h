// The SentencePiece (BPE-by-score) tokenizer stored in GGUF (tokenizer.ggml.model == "llama":
// Llama 2, Mistral, TinyLlama, Gemma), encoding as llama.cpp's SPM tokenizer does:
//   - special tokens written in the text (GGUF types control, user-defined and unknown) are cut
//     out first, leftmost-longest, and become their ids;
//   - each stretch of text in between gets a leading " " when the file's
//     tokenizer.ggml.add_space_prefix (default true) says so and it follows BOS, a special token
//     or the start; then every " " becomes U+2581 "▁";
//   - the stretch is split into UTF-8 characters, and the adjacent pair whose concatenation is
//     a token with the highest score is merged, again and again (ties: the leftmost pair);
//   - a symbol left that is not a token (a character outside the vocabulary) becomes its bytes'
//     byte-fallback tokens "<0xXX>" (<unk> when the vocabulary has no such token).
// BOS is added when asked (the file's tokenizer.ggml.add_bos_token, default true, is what
// add_bos_by_default reports). Decoding maps "▁" back to " ", byte tokens to their byte, and
// drops the leading space of the first piece after BOS when a space prefix was added. End of
// generation: EOS and the tokens of end_of_generation.h (control whatever their file type).
//
// Immutable after Create; safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab_table_tokenizer.h"

namespace kvshare {

// A SentencePiece vocabulary as plain data (what TokenizerFromGguf reads out of the file).
struct SpmVocab {
  std::vector<std::string> tokens;   // "▁" for spaces; "<0x41>" byte tokens
  std::vector<float> scores;         // per token (merge priority: higher first)
  std::vector<int32_t> token_types;  // per token (TokenType in bpe_tokenizer.h); empty: normal
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  std::vector<int32_t> extra_end_of_generation_ids;
  bool add_bos = true;
  bool add_space_prefix = true;
  std::string chat_template;
};

class SpmTokenizer final : public VocabTableTokenizer {
 public:
  // InvalidArgument naming the field when sizes disagree, a type or an id is out of range.
  static absl::StatusOr<std::unique_ptr<SpmTokenizer>> Create(SpmVocab vocab);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int32_t prev_id, int32_t id) const override;

 private:
  SpmTokenizer() = default;
  int32_t Lookup(std::string_view text) const;
  // Appends the ids of `text` (spaces already escaped to "▁").
  void EncodeStretch(std::string_view text, std::vector<int32_t>* ids) const;

  std::vector<float> scores_;
  absl::flat_hash_map<std::string_view, int32_t> token_to_id_;  // views into tokens_
  int32_t byte_token_[256];                                     // "<0xXX>" of each byte, or -1
  std::vector<std::pair<std::string, int32_t>> specials_by_byte_[256];  // longest first
  int32_t unk_id_ = -1;
  bool add_space_prefix_ = true;
};

}  // namespace kvshare
