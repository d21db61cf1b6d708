#include "common/tokenizer/llama2c_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/file.h"

namespace kvshare {
namespace {

// run.c's merge loop starts from best_score = -1e10 and needs a strictly higher score, so a
// piece scored at or below it is never produced by a merge.
constexpr float kNoMergeScore = -1e10f;

// "<0xXX>" pieces stand for the raw byte (run.c decodes them with sscanf "<0x%02hhX>").
bool ParseBytePiece(std::string_view piece, char* byte) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return false;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return false;
    }
    value = value * 16 + digit;
  }
  *byte = static_cast<char>(value);
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::Create(
    std::vector<std::string> pieces, std::vector<float> scores) {
  if (pieces.size() != scores.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("llama2.c tokenizer: %d pieces but %d scores",
                                                      pieces.size(), scores.size()));
  }
  // Every byte must have its fallback id.
  const size_t min_vocab = kByteFallbackOffset + 256;
  if (pieces.size() < min_vocab) {
    return absl::InvalidArgumentError(
        absl::StrFormat("llama2.c tokenizer: vocab_size %d is below %d (3 special ids + 256 "
                        "byte-fallback ids)",
                        pieces.size(), min_vocab));
  }
  return std::unique_ptr<Llama2cTokenizer>(
      new Llama2cTokenizer(std::move(pieces), std::move(scores)));
}

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::FromBytes(
    std::string_view bytes, int vocab_size) {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("llama2.c tokenizer: vocab_size %d must be positive", vocab_size));
  }
  size_t pos = 0;
  auto read_i32 = [&](int32_t* v) {
    if (bytes.size() - pos < 4) return false;
    std::memcpy(v, bytes.data() + pos, 4);
    pos += 4;
    return true;
  };
  int32_t max_token_length = 0;
  if (!read_i32(&max_token_length)) {
    return absl::DataLossError(absl::StrFormat(
        "llama2.c tokenizer: %d bytes, too short for the max_token_length header", bytes.size()));
  }
  if (max_token_length <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "llama2.c tokenizer: max_token_length %d must be positive", max_token_length));
  }
  // Grown as read: a corrupt vocab_size must cost a truncation error, not a huge allocation
  // (each entry takes at least 9 bytes).
  std::vector<std::string> pieces;
  std::vector<float> scores;
  const size_t most = std::min<size_t>(vocab_size, bytes.size() / 9);
  pieces.reserve(most);
  scores.reserve(most);
  for (int i = 0; i < vocab_size; ++i) {
    int32_t score_bits = 0;
    int32_t len = 0;
    if (!read_i32(&score_bits) || !read_i32(&len)) {
      return absl::DataLossError(absl::StrFormat(
          "llama2.c tokenizer: truncated at token %d of %d (byte offset %d): no score/length", i,
          vocab_size, pos));
    }
    float score;
    std::memcpy(&score, &score_bits, 4);
    scores.push_back(score);
    // run.c sizes its merge buffer from max_token_length, so a longer piece is a corrupt file.
    if (len < 1 || len > max_token_length) {
      return absl::InvalidArgumentError(
          absl::StrFormat("llama2.c tokenizer: token %d has length %d, outside 1..%d "
                          "(max_token_length)",
                          i, len, max_token_length));
    }
    if (bytes.size() - pos < static_cast<size_t>(len)) {
      return absl::DataLossError(absl::StrFormat(
          "llama2.c tokenizer: truncated at token %d of %d (byte offset %d): %d bytes of text "
          "expected, %d left",
          i, vocab_size, pos, len, bytes.size() - pos));
    }
    pieces.emplace_back(bytes.data() + pos, len);
    pos += len;
  }
  return Create(std::move(pieces), std::move(scores));
}

Llama2cTokenizer::Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), decoded_(pieces_.size()) {
  piece_to_id_.reserve(pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i) {
    piece_to_id_.try_emplace(pieces_[i], static_cast<int32_t>(i));
    char byte;
    if (ParseBytePiece(pieces_[i], &byte)) {
      decoded_[i] = std::string(1, byte);
    } else if (!IsControlToken(static_cast<int32_t>(i))) {
      decoded_[i] = pieces_[i];
    }
  }
}

int32_t Llama2cTokenizer::Lookup(std::string_view piece) const {
  auto it = piece_to_id_.find(piece);
  return it == piece_to_id_.end() ? -1 : it->second;
}

std::vector<int32_t> Llama2cTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 2);
  if (add_bos) ids.push_back(kBos);
  if (!text.empty()) {
    // SentencePiece's add_dummy_prefix. Should " " be missing, its byte stands in (run.c would
    // push -1 here).
    const int32_t space = Lookup(" ");
    ids.push_back(space >= 0 ? space : ' ' + kByteFallbackOffset);
  }

  // run.c walks the text one UTF-8 character at a time: a lead byte starts a character, up to
  // 4 bytes (continuations beyond the 4th start a new one). It stops at a NUL (a C string);
  // here NUL is just byte 0, encoded as <0x00>.
  size_t start = 0;
  while (start < text.size()) {
    size_t end = start + 1;
    while (end < text.size() && (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80 &&
           end - start < 4) {
      ++end;
    }
    const std::string_view ch = text.substr(start, end - start);
    const int32_t id = Lookup(ch);
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (char c : ch) ids.push_back(static_cast<uint8_t>(c) + kByteFallbackOffset);
    }
    start = end;
  }
  MergePairs(&ids);
  return ids;
}

// run.c rescans every adjacent pair after each merge (quadratic). This keeps the candidate pairs
// in a heap instead and makes the identical choice each step: the pair with the highest score,
// ties to the leftmost. Symbols form a linked list; a symbol's position in the original list
// orders pairs left to right, and a heap entry is stale once either of its symbols changed.
void Llama2cTokenizer::MergePairs(std::vector<int32_t>* ids) const {
  const int n = static_cast<int>(ids->size());
  if (n < 2) return;
  std::vector<int32_t>& id = *ids;
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }

  struct Candidate {
    float score;
    int left;  // symbol index; the right one is next[left] when pushed
    int right;
    int32_t left_id, right_id, merged_id;
    bool operator<(const Candidate& o) const {  // std::priority_queue pops the largest
      if (score != o.score) return score < o.score;
      return left > o.left;
    }
  };
  std::priority_queue<Candidate> heap;
  std::string buffer;
  auto push = [&](int left) {
    if (left < 0) return;
    const int right = next[left];
    if (right < 0) return;
    buffer.assign(pieces_[id[left]]);
    buffer.append(pieces_[id[right]]);
    const int32_t merged = Lookup(buffer);
    if (merged < 0 || !(scores_[merged] > kNoMergeScore)) return;
    heap.push({scores_[merged], left, right, id[left], id[right], merged});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);

  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || id[c.left] != c.left_id ||
        id[c.right] != c.right_id) {
      continue;  // stale: one side was merged since
    }
    id[c.left] = c.merged_id;
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.left] >= 0) prev[next[c.left]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  int out = 0;
  for (int i = 0; i >= 0; i = next[i]) id[out++] = id[i];
  id.resize(out);
}

std::string Llama2cTokenizer::DecodeToken(int32_t prev_id, int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  const std::string& bytes = decoded_[id];
  // The dummy prefix added at encoding: the first piece after BOS carries its space.
  if (prev_id == kBos && !bytes.empty() && bytes[0] == ' ') return bytes.substr(1);
  return bytes;
}

std::string Llama2cTokenizer::TokenText(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return pieces_[id];
}

bool Llama2cTokenizer::IsEndOfGeneration(int32_t id) const {
  // run.c also stops at BOS: llama2.c's training data separates stories with BOS, so a model
  // trained on it ends a story by starting the next one.
  return id == kEos || id == kBos;
}

absl::StatusOr<std::string> Llama2cTokenizer::ApplyChatTemplate(
    const std::vector<ChatMessage>& /*messages*/, bool /*add_generation_prompt*/) const {
  return absl::UnimplementedError("model has no chat template");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int vocab_size) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> tokenizer =
      Llama2cTokenizer::FromBytes(*bytes, vocab_size);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  return std::unique_ptr<Tokenizer>(std::move(*tokenizer));
}

}  // namespace kvshare
