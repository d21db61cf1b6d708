// The llama2.c tokenizer against run.c: GOLDEN.md's ids (computed with the original run.c) and
// tests/reference/llama2c_tokens.json (a Python port of run.c's encode, checked against GOLDEN).
#include "common/tokenizer/llama2c_tokenizer.h"

#include <chrono>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::kvshare::testing::Asset;
using ::kvshare::testing::ReadFileOrDie;
using ::kvshare::testing::SourcePath;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr int kVocab = 512;

std::unique_ptr<Tokenizer> LoadTok512() {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadLlama2cTokenizer(Asset("tok512.bin"), kVocab);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

// The ids in the code block of GOLDEN.md section 3.
std::vector<int32_t> GoldenSection3Ids() {
  const std::string golden = ReadFileOrDie(Asset("GOLDEN.md"));
  const size_t section = golden.find("## 3.");
  const size_t open = golden.find("```", section);
  const size_t close = golden.find("```", open + 3);
  EXPECT_NE(section, std::string::npos);
  std::istringstream in(golden.substr(open + 3, close - open - 3));
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

// A text asset's first `limit` bytes, cut after the last newline (whole UTF-8 characters).
std::string AssetPrefix(const std::string& file, size_t limit) {
  std::string text = ReadFileOrDie(Asset(file)).substr(0, limit);
  return text.substr(0, text.rfind('\n') + 1);
}

TEST(Llama2cTokenizerTest, EncodesOnceUponATimeAsRunC) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("Once upon a time", /*add_bos=*/true),
              ElementsAre(1, 403, 407, 261, 378));
  EXPECT_THAT(tok->Encode("Once upon a time", /*add_bos=*/false), ElementsAre(403, 407, 261, 378));
}

TEST(Llama2cTokenizerTest, MatchesGoldenIdsOfTinyStoriesPrefix) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  std::string text = ReadFileOrDie(Asset("tinystories-sample.txt")).substr(0, 6000);
  text.resize(text.rfind(' '));
  std::vector<int32_t> ids = tok->Encode(text, /*add_bos=*/true);
  ASSERT_GE(ids.size(), 512u);
  ids.resize(512);
  const std::vector<int32_t> golden = GoldenSection3Ids();
  ASSERT_EQ(golden.size(), 512u);
  EXPECT_THAT(ids, ElementsAreArray(golden));
}

TEST(Llama2cTokenizerTest, MatchesRunCOnByteFallbackAndEdgeCases) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  const nlohmann::json ref =
      nlohmann::json::parse(ReadFileOrDie(SourcePath("tests/reference/llama2c_tokens.json")));
  ASSERT_GE(ref["cases"].size(), 5u);
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    EXPECT_THAT(tok->Encode(text, /*add_bos=*/true),
                ElementsAreArray(c["ids"].get<std::vector<int32_t>>()))
        << c["name"];
    EXPECT_EQ(tok->Decode(tok->Encode(text, /*add_bos=*/true)), text) << c["name"];
  }
}

TEST(Llama2cTokenizerTest, RoundTripsTextAssets) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  const std::string shakespeare = ReadFileOrDie(Asset("tinyshakespeare.txt"));
  const std::string wikitext = ReadFileOrDie(Asset("wikitext-2-raw-test.txt"));
  const std::vector<std::pair<std::string, std::string>> texts = {
      {"tinystories-sample", ReadFileOrDie(Asset("tinystories-sample.txt"))},
      {"tinyshakespeare[0:100k]", AssetPrefix("tinyshakespeare.txt", 100000)},
      {"tinyshakespeare[500k:+50k]", shakespeare.substr(500000, 50000)},
      // WikiText has accents, dashes and CJK, all byte fallback in a 512-token vocabulary.
      {"wikitext[0:100k]", AssetPrefix("wikitext-2-raw-test.txt", 100000)},
  };
  for (const auto& [name, text] : texts) {
    ASSERT_FALSE(text.empty()) << name;
    const std::vector<int32_t> ids = tok->Encode(text, /*add_bos=*/true);
    EXPECT_EQ(tok->Decode(ids), text) << name;
  }
}

TEST(Llama2cTokenizerTest, DecodeStripsDummySpaceOnlyAfterBos) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->DecodeToken(1, 403), "Once");
  EXPECT_EQ(tok->DecodeToken(378, 403), " Once");
  EXPECT_EQ(tok->DecodeToken(-1, 403), " Once");
  // Byte-fallback pieces "<0xXX>" are the raw byte.
  EXPECT_EQ(tok->DecodeToken(1, 0x0A + 3), "\n");
  EXPECT_EQ(tok->DecodeToken(5, 0xE4 + 3), "\xE4");
  EXPECT_EQ(tok->TokenText(0xE4 + 3), "<0xE4>");
  // BOS and EOS mark structure: no text, but their pieces stay visible.
  EXPECT_EQ(tok->DecodeToken(-1, 1), "");
  EXPECT_EQ(tok->DecodeToken(-1, 2), "");
  EXPECT_EQ(tok->TokenText(1), "\n<s>\n");
  EXPECT_TRUE(tok->IsControlToken(1));
  EXPECT_FALSE(tok->IsControlToken(403));
  EXPECT_EQ(tok->DecodeToken(-1, kVocab), "");
  EXPECT_EQ(tok->DecodeToken(-1, -5), "");
  EXPECT_EQ(tok->Decode({1, 403, 407, 261, 378, 2}), "Once upon a time");
}

TEST(Llama2cTokenizerTest, ReportsSpecialIdsAndHasNoChatTemplate) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), kVocab);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->add_bos_by_default());
  EXPECT_TRUE(tok->IsEndOfGeneration(2));
  EXPECT_TRUE(tok->IsEndOfGeneration(1));  // run.c stops at BOS (stories are BOS-separated)
  EXPECT_FALSE(tok->IsEndOfGeneration(403));
  EXPECT_THAT(tok->Encode("", /*add_bos=*/true), ElementsAre(1));
  EXPECT_THAT(tok->Encode("", /*add_bos=*/false), ElementsAre());
  absl::StatusOr<std::string> chat = tok->ApplyChatTemplate({{"user", "hi"}}, true);
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(chat.status().message()), HasSubstr("no chat template"));
}

TEST(Llama2cTokenizerTest, RejectsTruncatedFileNamingTheToken) {
  const std::string bytes = ReadFileOrDie(Asset("tok512.bin"));
  // Every cut short of the last token's end is an error; none may crash or read past the end.
  for (size_t cut = 0; cut < bytes.size(); cut += (cut < 64 ? 1 : 97)) {
    absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> t =
        Llama2cTokenizer::FromBytes(std::string_view(bytes.data(), cut), kVocab);
    ASSERT_FALSE(t.ok()) << "cut at " << cut;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss) << t.status();
    if (cut >= 4) {
      EXPECT_THAT(std::string(t.status().message()), HasSubstr("token ")) << cut;
    }
  }
  // One token more than the file holds.
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> t =
      Llama2cTokenizer::FromBytes(bytes, kVocab + 1);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("token 512"));
}

TEST(Llama2cTokenizerTest, RejectsTokenLengthOutOfRange) {
  std::string bytes = ReadFileOrDie(Asset("tok512.bin"));
  // Token 0's length field sits after max_token_length (4 bytes) and its score (4 bytes).
  for (int32_t bad : {0, -1, 8, 1 << 30}) {
    std::string copy = bytes;
    std::memcpy(&copy[8], &bad, 4);
    absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> t = Llama2cTokenizer::FromBytes(copy, kVocab);
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("token 0 has length"));
  }
  std::string copy = bytes;
  const int32_t zero = 0;
  std::memcpy(&copy[0], &zero, 4);
  EXPECT_EQ(Llama2cTokenizer::FromBytes(copy, kVocab).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Too few ids for the byte fallback.
  EXPECT_EQ(Llama2cTokenizer::FromBytes(bytes, 100).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Llama2cTokenizerTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t =
      LoadLlama2cTokenizer(Asset("tok512.bin") + ".missing", kVocab);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
}

TEST(Llama2cTokenizerTest, MergesTiesToTheLeftmostPair) {
  // "ab" and "bc" score the same: run.c merges the first pair it scans, so "abc" -> ab, c.
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  std::vector<float> scores(3, 0.0f);
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof(piece), "<0x%02X>", b);
    pieces.push_back(piece);
    scores.push_back(0.0f);
  }
  const int32_t base = static_cast<int32_t>(pieces.size());
  for (const char* p : {" ", "a", "b", "c", "ab", "bc", " ab"}) pieces.push_back(p);
  scores.insert(scores.end(), {-1.0f, -1.0f, -1.0f, -1.0f, -2.0f, -2.0f, -3.0f});
  auto tok = Llama2cTokenizer::Create(pieces, scores);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // " " a b c -> " " ab c -> " ab" c
  EXPECT_THAT((*tok)->Encode("abc", false), ElementsAre(base + 6, base + 3));
  // Not in the vocabulary: byte fallback, as run.c.
  EXPECT_THAT((*tok)->Encode("x", false), ElementsAre(base + 0, 'x' + 3));
}

TEST(Llama2cTokenizerTest, LoadsTheTokenizerBesideALlama2cModel) {
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(Asset("stories260K.bin"));
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizerForModel(**model, "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 512);
  EXPECT_THAT((*tok)->Encode("Once upon a time", true), ElementsAre(1, 403, 407, 261, 378));
  EXPECT_EQ(LoadTokenizerForModel(**model, Asset("tok512.bin") + ".missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(Llama2cTokenizerTest, Encodes100KbFast) {
  auto tok = LoadTok512();
  ASSERT_NE(tok, nullptr);
  const std::string text = AssetPrefix("tinyshakespeare.txt", 100000);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok->Encode(text, true);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // run.c's quadratic merge loop takes minutes here; the heap takes milliseconds. The bound
  // leaves room for sanitizer builds and a busy machine.
  EXPECT_LT(seconds, 2.0) << ids.size() << " ids";
}

}  // namespace
}  // namespace kvshare
