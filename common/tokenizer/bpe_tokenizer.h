// Byte-level BPE as stored in GGUF (tokenizer.ggml.model == "gpt2") and as HF `tokenizers`
// runs it. Encode: special tokens written in the text (GGUF token types 3 = control and
// 4 = user-defined, HF's added tokens) are cut out first, leftmost-longest; the text between
// them is pre-tokenised (see pre_tokenizer.h); each piece's bytes become GPT-2 alphabet
// characters (byte_level.h), which are merged pair by pair in merge-rank order (lowest rank
// first, ties to the leftmost pair) until no ranked pair is left. A byte whose character is
// not in the vocabulary (SmolLM2 has none for 21 bytes, e.g. 0x04, 0xC0, 0xFF) is dropped, as
// HF's BPE without unk_token and llama.cpp do.
//
// DecodeToken maps a token's characters back to bytes; control tokens decode to "" (their
// text is TokenText). End of generation: EOS, and the tokens that end a turn or a document
// (end_of_generation.h: control tokens whatever their type in the file, as llama.cpp has them).
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
#include "common/tokenizer/pre_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab_table_tokenizer.h"

namespace kvshare {

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// A byte-level BPE vocabulary as plain data (what TokenizerFromGguf reads out of the file).
struct BpeVocab {
  std::vector<std::string> tokens;   // GPT-2 alphabet text; added tokens as written
  std::vector<int32_t> token_types;  // per token (TokenType); empty: all normal
  std::vector<std::string> merges;   // "left right", rank = index
  std::string pre = "smollm";        // tokenizer.ggml.pre
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  std::vector<int32_t> extra_end_of_generation_ids;  // e.g. tokenizer.ggml.eot_token_id
  bool add_bos = false;
  std::string chat_template;  // Jinja text; empty when none
};

class BpeTokenizer final : public VocabTableTokenizer {
 public:
  // InvalidArgument naming the index when a token type or a merge is malformed (not two
  // tokens of the vocabulary whose concatenation is one too) or an id is out of range;
  // Unimplemented for an unknown pre-tokenizer. An unsupported chat template is not an error
  // here: ApplyChatTemplate reports it.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(BpeVocab vocab);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int32_t prev_id, int32_t id) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  BpeTokenizer() = default;
  // Appends the ids of one pre-tokenised piece.
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;
  // Appends the ids of text that may contain special tokens.
  void EncodeText(std::string_view text, std::vector<int32_t>* ids) const;

  absl::flat_hash_map<uint64_t, Merge> merges_;  // PairKey(left, right) ->
  int32_t byte_token_[256];                      // the token of each byte's character, or -1
  // Special tokens to cut out of the text, grouped by first byte, longest first.
  std::vector<std::pair<std::string, int32_t>> specials_by_byte_[256];
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  // Token text (GPT-2 alphabet) -> id, for pre-tokenizers with ignore_merges(); else empty.
  absl::flat_hash_map<std::string, int32_t> whole_tokens_;
};

}  // namespace kvshare
