#include "common/tokenizer/spm_tokenizer.h"

#include <algorithm>
#include <climits>
#include <queue>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "common/tokenizer/end_of_generation.h"

namespace kvshare {
namespace {

constexpr std::string_view kSpace = "\xe2\x96\x81";  // U+2581 "▁"

int Utf8Length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xe0) == 0xc0) return 2;
  if ((lead & 0xf0) == 0xe0) return 3;
  if ((lead & 0xf8) == 0xf0) return 4;
  return 1;  // a continuation or invalid byte stands alone (as llama.cpp's unicode_len_utf8)
}

bool ParseByteToken(std::string_view text, uint8_t* byte) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return false;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return false;
    }
    value = value * 16 + digit;
  }
  *byte = static_cast<uint8_t>(value);
  return true;
}

std::string Unescape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, kSpace.size(), kSpace) == 0) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SpmTokenizer>> SpmTokenizer::Create(SpmVocab vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0 || n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("SentencePiece tokenizer: %d tokens (want 1..%d)", n, INT32_MAX));
  }
  if (vocab.scores.size() != n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SentencePiece tokenizer: tokenizer.ggml.scores has %d entries for %d tokens",
        vocab.scores.size(), n));
  }
  if (!vocab.token_types.empty() && vocab.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SentencePiece tokenizer: %d token types for %d tokens", vocab.token_types.size(), n));
  }
  const int vocab_size = static_cast<int>(n);
  const std::pair<const char*, int32_t> ids_to_check[] = {
      {"bos_id", vocab.bos_id}, {"eos_id", vocab.eos_id}, {"unk_id", vocab.unk_id}};
  for (const auto& [name, id] : ids_to_check) {
    if (id < -1 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "SentencePiece tokenizer: %s %d outside 0..%d", name, id, vocab_size - 1));
    }
  }
  for (int32_t id : vocab.extra_end_of_generation_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "SentencePiece tokenizer: end-of-generation id %d outside 0..%d", id, vocab_size - 1));
    }
  }

  std::unique_ptr<SpmTokenizer> t(new SpmTokenizer());
  t->tokens_ = std::move(vocab.tokens);
  t->scores_ = std::move(vocab.scores);
  t->bos_id_ = vocab.bos_id;
  t->eos_id_ = vocab.eos_id;
  t->unk_id_ = vocab.unk_id;
  t->add_bos_ = vocab.add_bos;
  t->add_space_prefix_ = vocab.add_space_prefix;
  if (!vocab.chat_template.empty()) {
    t->chat_template_ = ChatTemplate::FromJinja(vocab.chat_template);
  }
  t->token_to_id_.reserve(n);
  t->decoded_.resize(n);
  t->control_.assign(n, 0);
  t->end_of_generation_.assign(n, 0);
  for (int32_t i = 0; i < vocab_size; ++i) {
    const std::string& text = t->tokens_[i];
    // A duplicated text maps to its last id, as llama.cpp's token_to_id.
    t->token_to_id_[text] = i;
    int32_t type =
        vocab.token_types.empty() ? static_cast<int32_t>(TokenType::kNormal) : vocab.token_types[i];
    if (type < static_cast<int32_t>(TokenType::kNormal) ||
        type > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("SentencePiece tokenizer: token %d (\"%s\") has type %d, outside 1..6", i,
                          absl::CEscape(text), type));
    }
    // A token that ends a turn is control whatever its type in the file (end_of_generation.h).
    if (IsEndOfGenerationText(text)) {
      type = static_cast<int32_t>(TokenType::kControl);
      t->end_of_generation_[i] = 1;
    }
    uint8_t byte = 0;
    switch (static_cast<TokenType>(type)) {
      case TokenType::kControl:
        t->control_[i] = 1;
        break;
      case TokenType::kByte:
        t->decoded_[i] = ParseByteToken(text, &byte) ? std::string(1, static_cast<char>(byte)) : "";
        break;
      case TokenType::kUserDefined:
        t->decoded_[i] = text;
        break;
      case TokenType::kUnknown:
      case TokenType::kUnused:
        break;
      case TokenType::kNormal:
        t->decoded_[i] = Unescape(text);
        break;
    }
    // llama.cpp cuts control, user-defined and unknown tokens out of the text (parse_special).
    if ((type == static_cast<int32_t>(TokenType::kControl) ||
         type == static_cast<int32_t>(TokenType::kUserDefined) ||
         type == static_cast<int32_t>(TokenType::kUnknown)) &&
        !text.empty()) {
      t->specials_by_byte_[static_cast<uint8_t>(text[0])].emplace_back(text, i);
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
    std::stable_sort(group.begin(), group.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  for (int b = 0; b < 256; ++b) {
    const std::string hex = absl::StrFormat("<0x%02X>", b);
    int32_t id = t->Lookup(hex);
    if (id < 0) id = t->Lookup(std::string(1, static_cast<char>(b)));  // llama.cpp's second try
    t->byte_token_[b] = id;
  }
  return t;
}

int32_t SpmTokenizer::Lookup(std::string_view text) const {
  auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

std::vector<int32_t> SpmTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 2 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  bool after_special = true;  // the start counts as following a special token
  auto encode_raw = [&](std::string_view raw) {
    if (raw.empty()) return;
    std::string escaped;
    escaped.reserve(raw.size() + 8);
    if (add_space_prefix_ && after_special) escaped += kSpace;
    for (char c : raw) {
      if (c == ' ') {
        escaped += kSpace;
      } else {
        escaped += c;
      }
    }
    EncodeStretch(escaped, &ids);
    after_special = false;
  };
  size_t pos = 0, scan = 0;
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
    encode_raw(text.substr(pos, scan - pos));
    ids.push_back(found->second);
    after_special = true;
    scan += found->first.size();
    pos = scan;
  }
  encode_raw(text.substr(pos));
  return ids;
}

// llama.cpp's llm_tokenizer_spm_session: symbols are UTF-8 characters in a linked list; a heap
// holds the adjacent pairs whose text is a token, best score first, leftmost among equals;
// entries made stale by an earlier merge (a symbol emptied or grown) are skipped. Finally each
// symbol is its token, or (only a single character can fail to be one) its bytes' tokens.
void SpmTokenizer::EncodeStretch(std::string_view text, std::vector<int32_t>* ids) const {
  struct Symbol {
    size_t begin;
    size_t len;
    int prev;
    int next;
  };
  std::vector<Symbol> sym;
  for (size_t at = 0; at < text.size();) {
    const size_t len =
        std::min<size_t>(Utf8Length(static_cast<uint8_t>(text[at])), text.size() - at);
    const int index = static_cast<int>(sym.size());
    sym.push_back({at, len, index - 1, at + len == text.size() ? -1 : index + 1});
    at += len;
  }
  struct Bigram {
    float score;
    int left;
    int right;
    size_t size;
    bool operator<(const Bigram& o) const {  // std::priority_queue pops the largest
      if (score != o.score) return score < o.score;
      return left > o.left;
    }
  };
  std::priority_queue<Bigram> heap;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const std::string_view pair = text.substr(sym[left].begin, sym[left].len + sym[right].len);
    const int32_t id = Lookup(pair);
    if (id < 0) return;
    heap.push({scores_[id], left, right, pair.size()});
  };
  for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);
  while (!heap.empty()) {
    const Bigram b = heap.top();
    heap.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
    const std::string_view piece = text.substr(sym[i].begin, sym[i].len);
    const int32_t id = Lookup(piece);
    if (id >= 0) {
      ids->push_back(id);
      continue;
    }
    for (char c : piece) {
      const int32_t byte_id = byte_token_[static_cast<uint8_t>(c)];
      if (byte_id >= 0) {
        ids->push_back(byte_id);
      } else if (unk_id_ >= 0) {
        ids->push_back(unk_id_);
      }
    }
  }
}

std::string SpmTokenizer::DecodeToken(int32_t prev_id, int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  const std::string& text = decoded_[id];
  // The space prefix added before the first piece is not part of the text.
  if (add_space_prefix_ && prev_id == bos_id_ && bos_id_ >= 0 && !text.empty() && text[0] == ' ') {
    return text.substr(1);
  }
  return text;
}

}  // namespace kvshare
