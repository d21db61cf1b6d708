#include "common/tokenizer/pre_tokenizer.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace kvshare {
namespace {

// HF's GPT-2 regex with one correction for PCRE2: PCRE2 counts U+180E (MONGOLIAN VOWEL
// SEPARATOR, a format character since Unicode 6.3) as \s, Oniguruma (which HF uses) and
// Unicode's White_Space do not. So whitespace here is [^\S\x{180E}] and U+180E joins the
// "other" run. Checked codepoint by codepoint against `tokenizers` 0.23: this was the one
// difference among characters PCRE2's Unicode tables know.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?(?:[^\s\p{L}\p{N}]|\x{180E})+)"
    R"(|[^\S\x{180E}]+(?!\S|\x{180E})|[^\S\x{180E}]+)";
constexpr char kDigitPattern[] = R"(\p{N})";
// llama.cpp's Llama 3 and Qwen2 regexes (pre_tokenizer.h) with the same U+180E correction:
// \s -> [^\S\x{180E}], and U+180E counts as "other".
#define KVSHARE_LLAMA3_STYLE(DIGITS)                                                              \
  R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)" DIGITS \
  R"(| ?(?:[^\s\p{L}\p{N}]|\x{180E})+[\r\n]*|[^\S\x{180E}]*[\r\n]+)"                              \
  R"(|[^\S\x{180E}]+(?!\S|\x{180E})|[^\S\x{180E}]+)"
constexpr char kLlama3Pattern[] = KVSHARE_LLAMA3_STYLE(R"(\p{N}{1,3})");
constexpr char kQwen2Pattern[] = KVSHARE_LLAMA3_STYLE(R"(\p{N})");
#undef KVSHARE_LLAMA3_STYLE

}  // namespace

// A compiled pattern. pcre2_code is read-only while matching, so one serves all threads; each
// match gets its own match data.
struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }

  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const char* pattern) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    // MATCH_INVALID_UTF: the input is arbitrary bytes; invalid UTF-8 fails to match instead
    // of failing the whole call.
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error,
                                     &error_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InternalError(absl::StrCat("pre-tokenizer regex ", pattern, " at offset ",
                                              error_offset, ": ",
                                              reinterpret_cast<const char*>(message)));
    }
    // JIT is a speed-up only; the interpreter gives the same matches when it is unavailable.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    auto regex = std::make_unique<Regex>();
    regex->code = code;
    return regex;
  }

  // The next match in `subject` at or after `start`: true with [*begin, *end), or false when
  // there is none (or PCRE2 failed, e.g. out of JIT stack: the caller then keeps the rest
  // whole rather than losing bytes).
  bool Find(std::string_view subject, size_t start, pcre2_match_data* match, size_t* begin,
            size_t* end) const {
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(),
                               start, 0, match, nullptr);
    if (rc <= 0) return false;
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    *begin = ovector[0];
    *end = ovector[1];
    return *end > *begin;
  }
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(const std::string& pre) {
  bool split_digits = false, ignore_merges = false;
  const char* pattern = kGpt2Pattern;
  if (pre == "smollm" || pre == "starcoder") {
    split_digits = true;
  } else if (pre == "gpt-2") {
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    pattern = kLlama3Pattern;
    ignore_merges = true;
  } else if (pre == "qwen2") {
    pattern = kQwen2Pattern;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.ggml.pre \"", pre,
                     "\" is not supported (known: smollm, starcoder, gpt-2, llama-bpe, llama3, "
                     "llama-v3, qwen2)"));
  }
  std::unique_ptr<Regex> digit;
  if (split_digits) {
    absl::StatusOr<std::unique_ptr<Regex>> compiled = Regex::Compile(kDigitPattern);
    if (!compiled.ok()) return compiled.status();
    digit = std::move(*compiled);
  }
  absl::StatusOr<std::unique_ptr<Regex>> word = Regex::Compile(pattern);
  if (!word.ok()) return word.status();
  return std::unique_ptr<PreTokenizer>(
      new PreTokenizer(std::move(digit), std::move(*word), ignore_merges));
}

PreTokenizer::PreTokenizer(std::unique_ptr<Regex> digit, std::unique_ptr<Regex> word,
                           bool ignore_merges)
    : digit_(std::move(digit)), word_(std::move(word)), ignore_merges_(ignore_merges) {}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  if (digit_ == nullptr) {
    SplitWords(text, pieces);
    return;
  }
  // HF runs Digits before ByteLevel, so the GPT-2 regex sees each stretch between digits as a
  // whole subject: "a  1" gives "a", "  ", "1" (the lookahead in \s+(?!\S) ends at the stretch).
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(digit_->code, nullptr);
  size_t pos = 0;
  size_t begin = 0, end = 0;
  while (pos < text.size() && digit_->Find(text, pos, match, &begin, &end)) {
    SplitWords(text.substr(pos, begin - pos), pieces);
    pieces->push_back(text.substr(begin, end - begin));
    pos = end;
  }
  pcre2_match_data_free(match);
  SplitWords(text.substr(pos), pieces);
}

void PreTokenizer::SplitWords(std::string_view text, std::vector<std::string_view>* pieces) const {
  if (text.empty()) return;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(word_->code, nullptr);
  size_t pos = 0;
  size_t begin = 0, end = 0;
  while (pos < text.size() && word_->Find(text, pos, match, &begin, &end)) {
    // Only invalid UTF-8 is left between matches: every character is a letter, a number,
    // whitespace or "other", and one of the alternatives takes each.
    if (begin > pos) pieces->push_back(text.substr(pos, begin - pos));
    pieces->push_back(text.substr(begin, end - begin));
    pos = end;
  }
  pcre2_match_data_free(match);
  if (pos < text.size()) pieces->push_back(text.substr(pos));
}

}  // namespace kvshare
