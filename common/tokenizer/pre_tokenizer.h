// Pre-tokenisation for byte-level BPE: the text (with special tokens already cut out) is split
// into pieces that BPE merges never cross. Which rules apply is named by the GGUF's
// tokenizer.ggml.pre:
//   "smollm", "starcoder": each numeric character (\p{N}) is its own piece (HF's
//       Digits(individual_digits=true)), then the GPT-2 regex on each stretch in between;
//   "gpt-2": the GPT-2 regex alone;
//   "llama-bpe" (also "llama3", "llama-v3"; Llama 3): the Llama 3 regex alone, and a piece that
//       is a whole token of the vocabulary is that token, unmerged (ignore_merges());
//   "qwen2": the Qwen2 regex alone (the Llama 3 one with single digits).
// The Llama 3 regex, as llama.cpp writes it (tokenizer.json's with the case-insensitive group
// spelled out):
//   (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|
//   \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// The GPT-2 regex is HF ByteLevel's:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// matched with PCRE2 (UTF, Unicode properties). Bytes that are not valid UTF-8 match nothing
// and become pieces of their own, so every byte of the input lands in exactly one piece.
// Characters assigned after the Unicode version of the system's PCRE2 tables (10.42: Unicode
// 14) are neither letters nor numbers here, while HF (Rust, Oniguruma) may know them; such
// text can split differently. Everything PCRE2 knows splits as HF does.
//
// Immutable after Create; Split is safe to call from many threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvshare {

class PreTokenizer {
 public:
  // Unimplemented naming `pre` when it is not one of the names above.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(const std::string& pre);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Whether a piece that is a whole vocabulary token skips the merges (llama-bpe).
  bool ignore_merges() const { return ignore_merges_; }

  // Appends the pieces of `text`, in order, as views into it; they cover it exactly.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  struct Regex;
  PreTokenizer(std::unique_ptr<Regex> digit, std::unique_ptr<Regex> word, bool ignore_merges);
  void SplitWords(std::string_view text, std::vector<std::string_view>* pieces) const;

  std::unique_ptr<Regex> digit_;  // null when digits are not split out
  std::unique_ptr<Regex> word_;
  bool ignore_merges_ = false;
};

}  // namespace kvshare
