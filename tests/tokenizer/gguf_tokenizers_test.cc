// The GGUF tokenizers beyond SmolLM2's: SentencePiece ("llama": Llama 2's vocabulary and Gemma
// 3's) and the llama-bpe / qwen2 pre-tokenizers, against llama.cpp's own ids (llama-tokenize,
// in tests/reference/gguf_tokenizer_ids.json, written by gguf_tokenizer_reference.py); plus
// small plain-data vocabularies for the SentencePiece rules.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "common/model/gguf.h"
#include "common/tokenizer/pre_tokenizer.h"
#include "common/tokenizer/spm_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::kvshare::testing::ReadFileOrDie;
using ::kvshare::testing::SourcePath;
using ::kvshare::testing::TestModel;
using ::kvshare::testing::TestModelMissing;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A read-only mapping of a whole file (the Gemma GGUF is 253 MB; only its header is read).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    struct stat st;
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
      void* p = ::mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p != MAP_FAILED) {
        data_ = static_cast<const uint8_t*>(p);
        size_ = st.st_size;
      }
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

const nlohmann::json& Reference() {
  static const nlohmann::json* j = new nlohmann::json(
      nlohmann::json::parse(ReadFileOrDie(SourcePath("tests/reference/gguf_tokenizer_ids.json"))));
  return *j;
}

class LlamaCppIdsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppIdsTest, EveryCaseGivesLlamaCppsIds) {
  const nlohmann::json& vocab = Reference()["vocabs"][GetParam()];
  const std::string file = vocab["file"];
  const std::string path = TestModel(file);
  if (path.empty()) GTEST_SKIP() << TestModelMissing(file);
  MappedFile mapped(path);
  ASSERT_NE(mapped.data(), nullptr) << path;
  absl::StatusOr<GgufFile> gguf = GgufFile::Parse(mapped.data(), mapped.size());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = TokenizerFromGguf(*gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const auto& c : vocab["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> want = c["ids"];
    EXPECT_EQ((*tok)->Encode(text, /*add_bos=*/false), want) << GetParam() << " " << c["name"];
  }
  // llama-tokenize adds BOS where the file (or llama.cpp's default for it) says so.
  const std::vector<int32_t> with_bos = vocab["with_bos"]["ids"];
  EXPECT_EQ(
      (*tok)->Encode(vocab["with_bos"]["text"].get<std::string>(), (*tok)->add_bos_by_default()),
      with_bos);
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, LlamaCppIdsTest,
                         ::testing::Values("llama-spm", "gemma3", "llama-bpe", "qwen2"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// llama.cpp's own tokenizer test cases (test-tokenizer-0: models/ggml-vocab-*.gguf.inp, texts
// separated by "\n__ggml_vocab_test__\n", and .out, one line of ids per text; no BOS).
class LlamaCppTestFilesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppTestFilesTest, EveryTextGivesTheExpectedIds) {
  const std::string file = "ggml-vocab-" + GetParam() + ".gguf";
  const std::string path = TestModel(file), inp = TestModel(file + ".inp"),
                    out = TestModel(file + ".out");
  if (path.empty() || inp.empty() || out.empty()) GTEST_SKIP() << TestModelMissing(file + ".inp");
  MappedFile mapped(path);
  absl::StatusOr<GgufFile> gguf = GgufFile::Parse(mapped.data(), mapped.size());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = TokenizerFromGguf(*gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string raw = ReadFileOrDie(inp);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    texts.push_back(raw.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  std::vector<std::vector<int32_t>> want;
  std::istringstream lines(ReadFileOrDie(out));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    want.emplace_back();
    for (int32_t id; ids >> id;) want.back().push_back(id);
  }
  ASSERT_EQ(texts.size(), want.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ((*tok)->Encode(texts[i], false), want[i])
        << GetParam() << " text " << i << ": \"" << texts[i] << "\"";
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, LlamaCppTestFilesTest,
                         ::testing::Values("llama-spm", "llama-bpe", "qwen2"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// Decoding gives back the text: "▁" is a space, byte tokens their bytes, and the space prefix
// added before the first piece after BOS is dropped.
TEST(SentencePieceTest, DecodeInvertsEncodeOnRealVocabularies) {
  for (const char* name : {"llama-spm", "gemma3"}) {
    const nlohmann::json& vocab = Reference()["vocabs"][name];
    const std::string path = TestModel(vocab["file"]);
    if (path.empty()) GTEST_SKIP() << TestModelMissing(vocab["file"]);
    MappedFile mapped(path);
    absl::StatusOr<GgufFile> gguf = GgufFile::Parse(mapped.data(), mapped.size());
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = TokenizerFromGguf(*gguf);
    ASSERT_TRUE(tok.ok()) << tok.status();
    for (const auto& c : vocab["cases"]) {
      const std::string text = c["text"];
      if (text.find('<') != std::string::npos) continue;  // special tokens decode to ""
      EXPECT_EQ((*tok)->Decode((*tok)->Encode(text, true)), text) << name << " " << c["name"];
    }
  }
}

// A tiny vocabulary: <unk> <s> </s>, the 256 byte tokens, then pieces with scores.
std::unique_ptr<SpmTokenizer> TinySpm(bool add_space_prefix) {
  SpmVocab v;
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.scores = {0, 0, 0};
  v.token_types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
    v.tokens.push_back(hex);
    v.scores.push_back(0);
    v.token_types.push_back(6);
  }
  // ids 259.. : "▁", "a", "b", "c", "ab", "bc", "▁a", "abc"
  for (auto [piece, score] : std::vector<std::pair<std::string, float>>{{"\xe2\x96\x81", -1},
                                                                        {"a", -2},
                                                                        {"b", -2},
                                                                        {"c", -2},
                                                                        {"ab", -5},
                                                                        {"bc", -3},
                                                                        {"\xe2\x96\x81"
                                                                         "a",
                                                                         -4},
                                                                        {"abc", -6}}) {
    v.tokens.push_back(piece);
    v.scores.push_back(score);
    v.token_types.push_back(1);
  }
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_space_prefix = add_space_prefix;
  auto t = SpmTokenizer::Create(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(SentencePieceTest, MergesTheBestScoredPairFirst) {
  auto t = TinySpm(false);
  // "abc": "bc" (-3) beats "ab" (-5); then "a"+"bc" = "abc" (-6) is a token.
  EXPECT_THAT(t->Encode("abc", false), ElementsAre(266));
  // "ab": only one pair.
  EXPECT_THAT(t->Encode("ab", false), ElementsAre(263));
  // "abab": "ab" twice (no "ba"; leftmost first at equal scores).
  EXPECT_THAT(t->Encode("abab", false), ElementsAre(263, 263));
}

TEST(SentencePieceTest, SpacePrefixAndEscapedSpaces) {
  auto with = TinySpm(true);
  // " a" -> "▁a"; the space before "b" stays "▁" (no "▁b" token).
  EXPECT_THAT(with->Encode("a b", true), ElementsAre(1, 265, 259, 261));
  EXPECT_EQ(with->Decode(with->Encode("a b", true)), "a b");
  auto without = TinySpm(false);
  EXPECT_THAT(without->Encode("a b", false), ElementsAre(260, 259, 261));
  // A special token ends a stretch: the next one gets the prefix again.
  EXPECT_THAT(with->Encode("a</s>a", false), ElementsAre(265, 2, 265));
}

TEST(SentencePieceTest, CharactersOutsideTheVocabularyFallBackToBytes) {
  auto t = TinySpm(false);
  // "é" is C3 A9: two byte tokens (id = byte + 3); "x" is 0x78.
  EXPECT_THAT(t->Encode("xé", false), ElementsAre(0x78 + 3, 0xC3 + 3, 0xA9 + 3));
  EXPECT_EQ(t->Decode(t->Encode("xé", false)), "xé");
}

TEST(SentencePieceTest, RejectsScoresThatDoNotMatchTheTokens) {
  SpmVocab v;
  v.tokens = {"a", "b"};
  v.scores = {0};
  auto t = SpmTokenizer::Create(std::move(v));
  EXPECT_THAT(t.status().ToString(), HasSubstr("tokenizer.ggml.scores has 1 entries for 2 tokens"));
}

TEST(PreTokenizerTest, UnknownPreTokenizerIsRefusedByName) {
  auto p = PreTokenizer::Create("deepseek-coder");
  EXPECT_TRUE(absl::IsUnimplemented(p.status()));
  EXPECT_THAT(p.status().ToString(), HasSubstr("\"deepseek-coder\" is not supported"));
  EXPECT_THAT(p.status().ToString(), HasSubstr("llama-bpe"));
}

TEST(PreTokenizerTest, Llama3GroupsDigitsByThreeAndQwen2SplitsThem) {
  auto llama3 = PreTokenizer::Create("llama-bpe");
  ASSERT_TRUE(llama3.ok());
  std::vector<std::string_view> pieces;
  (*llama3)->Split("1234567 don't", &pieces);
  EXPECT_THAT(pieces, ElementsAre("123", "456", "7", " don", "'t"));
  auto qwen2 = PreTokenizer::Create("qwen2");
  ASSERT_TRUE(qwen2.ok());
  pieces.clear();
  (*qwen2)->Split("123 x", &pieces);
  EXPECT_THAT(pieces, ElementsAre("1", "2", "3", " x"));
}

}  // namespace
}  // namespace kvshare
