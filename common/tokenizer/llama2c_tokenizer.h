// The llama2.c tokenizer (tok*.bin): a SentencePiece-style vocabulary of pieces with scores.
// Encoding follows llama2.c run.c exactly: BOS (id 1) when asked, a dummy-prefix " " before
// non-empty text, each UTF-8 character looked up as a piece (else its bytes as byte-fallback
// ids byte + 3), then repeatedly the adjacent pair whose concatenation is a piece with the
// highest score is merged (ties: the leftmost pair). Ids 0, 1, 2 are <unk>, BOS, EOS.
//
// Immutable after construction; safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

class Llama2cTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kBos = 1;
  static constexpr int32_t kEos = 2;
  // Byte b falls back to id b + kByteFallbackOffset (pieces "<0x00>".."<0xFF>").
  static constexpr int32_t kByteFallbackOffset = 3;

  // From plain data: pieces[i] with scores[i]. InvalidArgument when the sizes differ or the
  // vocabulary is too small to hold the byte-fallback ids.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Create(std::vector<std::string> pieces,
                                                                  std::vector<float> scores);
  // From a tok*.bin file's bytes: int32 max_token_length, then `vocab_size` entries of
  // (float32 score, int32 length, bytes). DataLoss naming the token index when the file is
  // truncated; InvalidArgument when a length is outside 1..max_token_length.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> FromBytes(std::string_view bytes,
                                                                     int vocab_size);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int32_t prev_id, int32_t id) const override;
  bool IsControlToken(int32_t id) const override { return id == kBos || id == kEos; }
  std::string TokenText(int32_t id) const override;

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  bool add_bos_by_default() const override { return true; }
  bool IsEndOfGeneration(int32_t id) const override;
  absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const override;

 private:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores);
  // The piece's id, or -1 (run.c's str_lookup, by hash instead of binary search).
  int32_t Lookup(std::string_view piece) const;
  // run.c's merge loop over `ids` in place.
  void MergePairs(std::vector<int32_t>* ids) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<std::string> decoded_;  // DecodeToken's bytes per id ("<0x0A>" -> "\n")
  // Views into pieces_. Should two ids share a piece, the lowest id wins (run.c's bsearch
  // picks either; real vocabularies have no duplicates).
  absl::flat_hash_map<std::string_view, int32_t> piece_to_id_;
};

}  // namespace kvshare
