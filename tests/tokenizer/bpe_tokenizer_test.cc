// Byte-level BPE from the SmolLM2 GGUF against Hugging Face `tokenizers` (ids, asset digests
// and chat renderings in tests/reference/bpe_tokens.json, written by tokenizer_reference.py),
// plus small plain-data vocabularies for the merge and pre-tokenisation rules.
#include "common/tokenizer/bpe_tokenizer.h"

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "common/model/model.h"
#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/pre_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::kvshare::testing::Asset;
using ::kvshare::testing::ReadFileOrDie;
using ::kvshare::testing::SmolLm2Path;
using ::kvshare::testing::SourcePath;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// The SmolLM2 model and its tokenizer, loaded once for the suite.
class SmolLm2TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(SmolLm2Path());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizerForModel(*model_, "");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    reference_ = new nlohmann::json(
        nlohmann::json::parse(ReadFileOrDie(SourcePath("tests/reference/bpe_tokens.json"))));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete model_;
    delete reference_;
  }
  void SetUp() override { ASSERT_NE(tokenizer_, nullptr); }

  static Model* model_;
  static Tokenizer* tokenizer_;
  static nlohmann::json* reference_;
};
Model* SmolLm2TokenizerTest::model_ = nullptr;
Tokenizer* SmolLm2TokenizerTest::tokenizer_ = nullptr;
nlohmann::json* SmolLm2TokenizerTest::reference_ = nullptr;

std::string AssetPrefix(const std::string& file, size_t bytes) {
  return ReadFileOrDie(Asset(file)).substr(0, bytes);
}

TEST_F(SmolLm2TokenizerTest, ReadsSpecialIdsFromTheGguf) {
  const Tokenizer& t = *tokenizer_;
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_EQ(t.vocab_size(), model_->config().vocab_size);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_FALSE(t.add_bos_by_default());
  EXPECT_EQ(t.TokenText(0), "<|endoftext|>");
  EXPECT_EQ(t.TokenText(1), "<|im_start|>");
  EXPECT_EQ(t.TokenText(2), "<|im_end|>");
  // <|im_end|> ends an assistant turn, <|endoftext|> a document; <|im_start|> ends nothing.
  EXPECT_TRUE(t.IsEndOfGeneration(2));
  EXPECT_TRUE(t.IsEndOfGeneration(0));
  EXPECT_FALSE(t.IsEndOfGeneration(1));
  EXPECT_FALSE(t.IsEndOfGeneration(905));
  EXPECT_TRUE(t.IsControlToken(0));
  EXPECT_TRUE(t.IsControlToken(16));
  EXPECT_FALSE(t.IsControlToken(17));
}

TEST_F(SmolLm2TokenizerTest, MatchesHuggingFaceIdsOnVariedText) {
  ASSERT_GE((*reference_)["cases"].size(), 15u);
  for (const auto& c : (*reference_)["cases"]) {
    const std::string text = c["text"];
    EXPECT_THAT(tokenizer_->Encode(text, /*add_bos=*/false),
                ElementsAreArray(c["ids"].get<std::vector<int32_t>>()))
        << c["name"] << ": " << text;
  }
}

TEST_F(SmolLm2TokenizerTest, MatchesHuggingFaceIdsOnTextAssets) {
  for (const auto& a : (*reference_)["assets"]) {
    const std::string text = AssetPrefix(a["file"], a["prefix_bytes"].get<size_t>());
    ASSERT_EQ(Sha256Hex(ReadFileOrDie(Asset(a["file"]))), a["file_sha256"]) << a["file"];
    const std::vector<int32_t> ids = tokenizer_->Encode(text, /*add_bos=*/false);
    EXPECT_EQ(ids.size(), a["count"].get<size_t>()) << a["file"];
    EXPECT_EQ(Sha256Hex(absl::StrJoin(ids, " ")), a["ids_sha256"]) << a["file"];
  }
}

TEST_F(SmolLm2TokenizerTest, RoundTripsTextAssetsAndCases) {
  for (const char* file :
       {"tinystories-sample.txt", "tinyshakespeare.txt", "wikitext-2-raw-test.txt"}) {
    const std::string text = AssetPrefix(file, 100000);
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text, false)), text) << file;
  }
  for (const auto& c : (*reference_)["cases"]) {
    const std::string text = c["text"];
    // Control tokens decode to nothing; bytes without a token are dropped.
    if (text.find("<|") != std::string::npos || c["name"] == "bytes_without_tokens") continue;
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text, false)), text) << c["name"];
  }
  // Bytes that are not UTF-8 still survive (HF cannot take them; they become byte tokens),
  // except those with no token at all.
  const std::string invalid = "ok \xE4\xB8 cut\x80 \xFF\xFEgone";
  EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(invalid, false)), "ok \xE4\xB8 cut\x80 gone");
}

TEST_F(SmolLm2TokenizerTest, ControlTokensDecodeToNothingButKeepTheirText) {
  const std::vector<int32_t> ids = tokenizer_->Encode("<|im_start|>user\nhi<|im_end|>", false);
  ASSERT_THAT(ids, ElementsAre(1, 4093, 198, 6004, 2));
  EXPECT_EQ(tokenizer_->Decode(ids), "user\nhi");
  std::string shown;
  for (int32_t id : ids) {
    shown += tokenizer_->IsControlToken(id) ? tokenizer_->TokenText(id)
                                            : tokenizer_->DecodeToken(-1, id);
  }
  EXPECT_EQ(shown, "<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(tokenizer_->TokenText(4093), "user");
  EXPECT_EQ(tokenizer_->DecodeToken(-1, 49152), "");
  // add_bos prepends the file's BOS (<|im_start|> here) even though the model does not ask.
  EXPECT_THAT(tokenizer_->Encode("", true), ElementsAre(1));
  EXPECT_THAT(tokenizer_->Encode("", false), ElementsAre());
}

TEST_F(SmolLm2TokenizerTest, RendersTheChatTemplateAsJinjaDoes) {
  ASSERT_GE((*reference_)["chat"].size(), 4u);
  for (const auto& c : (*reference_)["chat"]) {
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    absl::StatusOr<std::string> text =
        tokenizer_->ApplyChatTemplate(messages, c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c["name"];
    EXPECT_THAT(tokenizer_->Encode(*text, false),
                ElementsAreArray(c["ids"].get<std::vector<int32_t>>()))
        << c["name"];
  }
}

TEST_F(SmolLm2TokenizerTest, Encodes100KbFast) {
  const std::string text = AssetPrefix("wikitext-2-raw-test.txt", 100000);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Tens of milliseconds in a release build; the bound leaves room for sanitizers and a busy
  // machine while still catching a quadratic merge loop.
  EXPECT_LT(seconds, 2.0) << ids.size() << " ids";
}

// ---- Plain-data vocabularies ----

// Every byte's character, then `extra` tokens; merges as given.
BpeVocab ByteVocab(const std::vector<std::string>& extra, const std::vector<std::string>& merges) {
  BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(ByteToUnicode(static_cast<uint8_t>(b)));
  v.tokens.insert(v.tokens.end(), extra.begin(), extra.end());
  v.merges = merges;
  v.pre = "smollm";
  return v;
}

int32_t Id(const BpeVocab& v, const std::string& token) {
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.tokens[i] == token) return static_cast<int32_t>(i);
  }
  ADD_FAILURE() << "no token " << token;
  return -1;
}

TEST(BpeTokenizerTest, MergesByRankAndTiesToTheLeftmostPair) {
  // "aaa": the one pair (a, a) occurs twice; the leftmost merges first -> "aa", "a".
  BpeVocab v = ByteVocab({"aa", "ab", "bc", "abc"}, {"b c", "a b", "a a", "a bc"});
  auto t = BpeTokenizer::Create(v);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT((*t)->Encode("aaa", false), ElementsAre(Id(v, "aa"), Id(v, "a")));
  // "abc": (b, c) ranks before (a, b), then (a, bc) applies.
  EXPECT_THAT((*t)->Encode("abc", false), ElementsAre(Id(v, "abc")));
}

TEST(BpeTokenizerTest, MatchesSpecialTokensLeftmostLongest) {
  BpeVocab v = ByteVocab({"<|a|>", "<|a|><|b|>", "<|b|>"}, {});
  v.token_types.assign(v.tokens.size(), static_cast<int32_t>(TokenType::kNormal));
  for (int i = 256; i < 259; ++i) v.token_types[i] = static_cast<int32_t>(TokenType::kControl);
  auto t = BpeTokenizer::Create(v);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT((*t)->Encode("<|a|><|b|><|b|>", false), ElementsAre(257, 258));
  EXPECT_THAT((*t)->Encode("x<|a|>", false), ElementsAre(Id(v, "x"), 256));
}

TEST(BpeTokenizerTest, RejectsMalformedMergesNamingTheIndex) {
  auto t = BpeTokenizer::Create(ByteVocab({"ab"}, {"a b", "ab"}));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("merge 1"));
  t = BpeTokenizer::Create(ByteVocab({}, {"a b"}));  // "ab" is not a token
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("merge 0"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("\"ab\" is not in the vocabulary"));
  BpeVocab bad_type = ByteVocab({}, {});
  bad_type.token_types.assign(bad_type.tokens.size(), 1);
  bad_type.token_types[7] = 9;
  t = BpeTokenizer::Create(bad_type);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("token 7"));
  BpeVocab bad_eos = ByteVocab({}, {});
  bad_eos.eos_id = 256;
  EXPECT_EQ(BpeTokenizer::Create(bad_eos).status().code(), absl::StatusCode::kInvalidArgument);
  BpeVocab bad_pre = ByteVocab({}, {});
  bad_pre.pre = "deepseek-coder";  // (was "qwen2", supported since)
  t = BpeTokenizer::Create(bad_pre);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("deepseek-coder"));
}

TEST(BpeTokenizerTest, ChatTemplateOutsideChatMlIsUnimplementedNamingIt) {
  BpeVocab v = ByteVocab({}, {});
  auto t = BpeTokenizer::Create(v);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->ApplyChatTemplate({{"user", "hi"}}, true).status().code(),
            absl::StatusCode::kUnimplemented);
  v.chat_template =
      "{{ bos_token }}{% for message in messages %}[INST] {{ message['content'] }} [/INST]"
      "{% endfor %}";
  t = BpeTokenizer::Create(v);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::string> text = (*t)->ApplyChatTemplate({{"user", "hi"}}, true);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(text.status().message()),
              HasSubstr("{{ bos_token }}{% for message in messages %}[INST] {{ messa"));
}

TEST(BpeTokenizerTest, ChatMlWithoutDefaultSystemPromptAddsNone) {
  BpeVocab v = ByteVocab({}, {});
  v.chat_template =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
  auto t = BpeTokenizer::Create(v);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::string> text = (*t)->ApplyChatTemplate({{"user", "hi"}}, true);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

std::vector<std::string> Split(const PreTokenizer& pre, std::string_view text) {
  std::vector<std::string_view> pieces;
  pre.Split(text, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

TEST(PreTokenizerTest, SplitsDigitsBeforeTheGpt2Regex) {
  auto pre = PreTokenizer::Create("smollm");
  ASSERT_TRUE(pre.ok()) << pre.status();
  // Digits first: the whitespace before "1" ends its stretch, so it stays whole.
  EXPECT_THAT(Split(**pre, "a  1"), ElementsAre("a", "  ", "1"));
  EXPECT_THAT(Split(**pre, "x 3.14"), ElementsAre("x", " ", "3", ".", "1", "4"));
  EXPECT_THAT(Split(**pre, "a  b\n\n\tc   "),
              ElementsAre("a", " ", " b", "\n\n", "\t", "c", "   "));
  EXPECT_THAT(Split(**pre, "don't I'll"), ElementsAre("don", "'t", " I", "'ll"));
  auto gpt2 = PreTokenizer::Create("gpt-2");
  ASSERT_TRUE(gpt2.ok());
  EXPECT_THAT(Split(**gpt2, "a  12"), ElementsAre("a", " ", " 12"));
}

}  // namespace
}  // namespace kvshare
