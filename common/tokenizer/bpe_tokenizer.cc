#include "common/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <climits>
#include <queue>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/end_of_generation.h"

namespace kvshare {
absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(BpeVocab vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0 || n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("BPE tokenizer: %d tokens (want 1..%d)", n, INT32_MAX));
  }
  if (!vocab.token_types.empty() && vocab.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrFormat("BPE tokenizer: %d token types for %d tokens",
                                                      vocab.token_types.size(), n));
  }
  const int vocab_size = static_cast<int>(n);
  const std::pair<const char*, int32_t> ids_to_check[] = {{"bos_id", vocab.bos_id},
                                                          {"eos_id", vocab.eos_id}};
  for (const auto& [name, id] : ids_to_check) {
    if (id < -1 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("BPE tokenizer: %s %d outside 0..%d", name, id, vocab_size - 1));
    }
  }
  for (int32_t id : vocab.extra_end_of_generation_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "BPE tokenizer: end-of-generation id %d outside 0..%d", id, vocab_size - 1));
    }
  }

  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  absl::StatusOr<std::unique_ptr<PreTokenizer>> pre = PreTokenizer::Create(vocab.pre);
  if (!pre.ok()) return pre.status();
  t->pre_tokenizer_ = std::move(*pre);
  t->bos_id_ = vocab.bos_id;
  t->eos_id_ = vocab.eos_id;
  t->add_bos_ = vocab.add_bos;
  if (!vocab.chat_template.empty()) {
    t->chat_template_ = ChatTemplate::FromJinja(vocab.chat_template);
  }

  absl::flat_hash_map<std::string_view, int32_t> token_to_id;
  token_to_id.reserve(n);
  t->decoded_.resize(n);
  t->control_.assign(n, 0);
  t->end_of_generation_.assign(n, 0);
  for (int32_t i = 0; i < vocab_size; ++i) {
    const std::string& text = vocab.tokens[i];
    // Lowest id wins a duplicated text (llama.cpp's choice; HF vocabularies are maps).
    token_to_id.try_emplace(text, i);
    int32_t type =
        vocab.token_types.empty() ? static_cast<int32_t>(TokenType::kNormal) : vocab.token_types[i];
    if (type < static_cast<int32_t>(TokenType::kNormal) ||
        type > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("BPE tokenizer: token %d (\"%s\") has type %d, outside 1..6", i,
                          absl::CEscape(text), type));
    }
    // A token that ends a turn is control whatever its type in the file (end_of_generation.h).
    if (IsEndOfGenerationText(text)) {
      type = static_cast<int32_t>(TokenType::kControl);
      t->end_of_generation_[i] = 1;
    }
    if (type == static_cast<int32_t>(TokenType::kControl)) t->control_[i] = 1;
    if (type == static_cast<int32_t>(TokenType::kControl) ||
        type == static_cast<int32_t>(TokenType::kUserDefined)) {
      if (!text.empty()) {
        t->specials_by_byte_[static_cast<uint8_t>(text[0])].emplace_back(text, i);
      }
    }
    if (type == static_cast<int32_t>(TokenType::kUserDefined)) {
      t->decoded_[i] = text;  // added tokens are stored as written, not byte-encoded
    } else if (type != static_cast<int32_t>(TokenType::kControl)) {
      t->decoded_[i] = UnicodeToBytes(text);
    }
  }
  for (int32_t id : {vocab.bos_id, vocab.eos_id}) {
    if (id >= 0) {
      t->control_[id] = 1;
      t->decoded_[id].clear();
    }
  }
  if (vocab.eos_id >= 0) t->end_of_generation_[vocab.eos_id] = 1;
  for (int32_t id : vocab.extra_end_of_generation_ids) t->end_of_generation_[id] = 1;
  for (auto& group : t->specials_by_byte_) {
    // Leftmost-longest, as HF's added-vocabulary matcher: at one position the longest wins.
    std::stable_sort(group.begin(), group.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id.find(ByteToUnicode(static_cast<uint8_t>(b)));
    t->byte_token_[b] = it == token_to_id.end() ? -1 : it->second;
  }

  t->merges_.reserve(vocab.merges.size());
  std::string merged;
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& merge = vocab.merges[rank];
    const size_t space = merge.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == merge.size() ||
        merge.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrFormat("BPE tokenizer: merge %d \"%s\" is not two tokens separated by one space",
                          rank, absl::CEscape(merge)));
    }
    const std::string_view left(merge.data(), space);
    const std::string_view right(merge.data() + space + 1, merge.size() - space - 1);
    merged.assign(left);
    merged.append(right);
    const auto l = token_to_id.find(left);
    const auto r = token_to_id.find(right);
    const auto m = token_to_id.find(merged);
    if (l == token_to_id.end() || r == token_to_id.end() || m == token_to_id.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "BPE tokenizer: merge %d \"%s\": \"%s\" is not in the vocabulary", rank,
          absl::CEscape(merge),
          absl::CEscape(std::string(l == token_to_id.end()   ? left
                                    : r == token_to_id.end() ? right
                                                             : std::string_view(merged)))));
    }
    // A repeated pair keeps its first (best) rank.
    t->merges_.try_emplace(PairKey(l->second, r->second),
                           Merge{static_cast<int32_t>(rank), m->second});
  }
  if (t->pre_tokenizer_->ignore_merges()) {
    for (const auto& [text, id] : token_to_id) t->whole_tokens_.emplace(std::string(text), id);
  }
  t->tokens_ = std::move(vocab.tokens);  // token_to_id's views are not used past here
  return t;
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  size_t pos = 0;   // start of the text not yet encoded
  size_t scan = 0;  // where to look for the next special token
  while (scan < text.size()) {
    const auto& candidates = specials_by_byte_[static_cast<uint8_t>(text[scan])];
    const std::pair<std::string, int32_t>* found = nullptr;
    for (const auto& special : candidates) {
      if (text.compare(scan, special.first.size(), special.first) == 0) {
        found = &special;
        break;
      }
    }
    if (found == nullptr) {
      ++scan;
      continue;
    }
    EncodeText(text.substr(pos, scan - pos), &ids);
    ids.push_back(found->second);
    scan += found->first.size();
    pos = scan;
  }
  EncodeText(text.substr(pos), &ids);
  return ids;
}

void BpeTokenizer::EncodeText(std::string_view text, std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  std::vector<std::string_view> pieces;
  pre_tokenizer_->Split(text, &pieces);
  for (std::string_view piece : pieces) EncodePiece(piece, ids);
}

// Classic BPE over one piece, as HF's Word::merge_all: a heap of the adjacent pairs that have
// a merge, lowest rank first and leftmost among equals; each merge replaces two symbols with
// one and offers the two new pairs it forms. Entries made stale by an earlier merge are
// skipped when popped. O(n log n) in the piece's length.
void BpeTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (pre_tokenizer_->ignore_merges()) {
    // llama.cpp's ignore_merges (Llama 3): a piece that is a token is taken whole.
    auto whole = whole_tokens_.find(BytesToUnicode(piece));
    if (whole != whole_tokens_.end()) {
      ids->push_back(whole->second);
      return;
    }
  }
  std::vector<int32_t> id;
  id.reserve(piece.size());
  for (char c : piece) {
    const int32_t token = byte_token_[static_cast<uint8_t>(c)];
    if (token >= 0) id.push_back(token);
  }
  const int n = static_cast<int>(id.size());
  if (n < 2) {
    ids->insert(ids->end(), id.begin(), id.end());
    return;
  }
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;
    int right;
    int32_t left_id, right_id, merged_id;
    bool operator<(const Candidate& o) const {  // std::priority_queue pops the largest
      if (rank != o.rank) return rank > o.rank;
      return left > o.left;
    }
  };
  std::priority_queue<Candidate> heap;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const int right = next[left];
    auto it = merges_.find(PairKey(id[left], id[right]));
    if (it == merges_.end()) return;
    heap.push({it->second.rank, left, right, id[left], id[right], it->second.merged_id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<uint8_t> alive(n, 1);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || id[c.left] != c.left_id ||
        id[c.right] != c.right_id) {
      continue;
    }
    id[c.left] = c.merged_id;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.left] >= 0) prev[next[c.left]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  for (int i = 0; i >= 0; i = next[i]) ids->push_back(id[i]);
}

std::string BpeTokenizer::DecodeToken(int32_t /*prev_id*/, int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return decoded_[id];
}

}  // namespace kvshare
