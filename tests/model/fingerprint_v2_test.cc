// Fingerprint v2 (common/model/fingerprint.h): the v1 digest of config and weights plus the
// tokenizer. A changed vocabulary, merge list or tokenizer file changes it; metadata outside
// the tokenizer does not. Strategies bound to the v1 fingerprint of the same weights are
// recognised and re-bound only on request (common/strategy/strategy_binding.h).
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/model/model.h"
#include "common/strategy/strategy_binding.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/gguf_builder.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// Golden values from `python3 tests/reference/fingerprint.py <model>` (an independent struct
// reader of the GGUF metadata and the tokenizer file, hashlib over the v2 serialisation).
constexpr char kStoriesV1[] = "ee4f2a582c7654b362d237176d73411382ab03d14a2c6d291fb8d85c2c767bd2";
// stories260K.bin with tok512.bin beside it.
constexpr char kStoriesV2[] = "fd800911528a36bdea139a352663fcec1f5065bfa5ecbdef1715f122016f9464";
// The same weights with no tokenizer (u8 0).
constexpr char kStoriesNoTokenizerV2[] =
    "c2cd194ed9589445b25bae2e58c9bca596ca2396d96dd3e2e9e60227d43831ce";
constexpr char kSmolLm2V1[] = "07b65860b54aa57ab1f2ba47da2dab8bd02a29e24d3df9dacec47f36e2b4bd4a";
constexpr char kSmolLm2V2[] = "7b51734dd527b3e947e2a0392dabe439d5310f23b83f17be161fc0a209369679";

std::unique_ptr<Model> LoadOrDie(const std::string& path, const std::string& tokenizer = "") {
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(path, tokenizer);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

// A copy of tok512.bin with one vocabulary byte changed, in a fresh directory.
std::string EditedTokenizer() {
  const std::string dir = ::testing::TempDir() + "/fingerprint_v2_test_tok";
  fs::create_directories(dir);
  std::string tok = testing::ReadFileOrDie(testing::Asset("tok512.bin"));
  // Layout: i32 max_token_length, then per token f32 score, i32 len, bytes. Token 300's text
  // is well past the header; flip its last byte's case.
  size_t at = 4;
  for (int i = 0; i < 300; ++i) {
    int32_t len = 0;
    std::memcpy(&len, tok.data() + at + 4, 4);
    at += 8 + len;
  }
  int32_t len = 0;
  std::memcpy(&len, tok.data() + at + 4, 4);
  tok[at + 8 + len - 1] ^= 0x20;
  const std::string path = dir + "/tok512.bin";
  std::ofstream(path, std::ios::binary) << tok;
  return path;
}

TEST(FingerprintV2Test, MatchesTheGoldenValuesFromTheReferenceScript) {
  std::unique_ptr<Model> stories = LoadOrDie(testing::Asset("stories260K.bin"));
  std::unique_ptr<Model> smol = LoadOrDie(testing::SmolLm2Path());
  ASSERT_NE(stories, nullptr);
  ASSERT_NE(smol, nullptr);
  EXPECT_EQ(stories->fingerprint_v1(), kStoriesV1);
  EXPECT_EQ(stories->fingerprint(), kStoriesV2);
  EXPECT_EQ(stories->tokenizer_path(), testing::Asset("tok512.bin"));
  EXPECT_EQ(smol->fingerprint_v1(), kSmolLm2V1);
  EXPECT_EQ(smol->fingerprint(), kSmolLm2V2);

  auto bytes = Model::FromBytes(Bytes(testing::ReadFileOrDie(testing::Asset("stories260K.bin"))),
                                "stories-from-bytes");
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ((*bytes)->fingerprint(), kStoriesNoTokenizerV2);
}

TEST(FingerprintV2Test, AChangedLlama2cVocabularyChangesV2ButNotV1) {
  std::unique_ptr<Model> edited = LoadOrDie(testing::Asset("stories260K.bin"), EditedTokenizer());
  ASSERT_NE(edited, nullptr);
  EXPECT_EQ(edited->fingerprint_v1(), kStoriesV1);
  EXPECT_NE(edited->fingerprint(), kStoriesV2);
  EXPECT_NE(edited->fingerprint(), kStoriesNoTokenizerV2);
}

TEST(FingerprintV2Test, GgufTokenizerMetadataIsCoveredAndOtherMetadataIsNot) {
  std::unique_ptr<Model> stories = LoadOrDie(testing::Asset("stories260K.bin"));
  ASSERT_NE(stories, nullptr);
  auto build = [&](const std::string& merge, int32_t eos, const std::string& description) {
    testing::GgufBuilder b = testing::LlamaGgufFromModel(*stories);
    b.AddString("tokenizer.ggml.model", "gpt2");
    b.AddString("tokenizer.ggml.pre", "smollm");
    b.AddStringArray("tokenizer.ggml.tokens", {"a", "b", "ab", "c"});
    b.AddStringArray("tokenizer.ggml.merges", {merge});
    b.AddI32("tokenizer.ggml.eos_token_id", eos);
    b.AddString("general.description", description);
    auto m = Model::FromBytes(b.Build(), "t.gguf");
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? (*m)->fingerprint() : "";
  };
  const std::string base = build("a b", 3, "one");
  EXPECT_EQ(build("a b", 3, "two"), base);  // not tokenizer metadata
  EXPECT_NE(build("b c", 3, "one"), base);  // a merge
  EXPECT_NE(build("a b", 2, "one"), base);  // a special id
  EXPECT_NE(base, stories->fingerprint());
}

TEST(FingerprintV2Test, ATokenizerOtherThanTheFingerprintedOneIsRefused) {
  std::unique_ptr<Model> stories = LoadOrDie(testing::Asset("stories260K.bin"));
  ASSERT_NE(stories, nullptr);
  auto other = LoadTokenizerForModel(*stories, EditedTokenizer());
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(other.status().message(), HasSubstr("fingerprinted"));
  // The same bytes under another path are the same tokenizer.
  const std::string copy = ::testing::TempDir() + "/fingerprint_v2_test_copy_tok512.bin";
  fs::copy_file(testing::Asset("tok512.bin"), copy, fs::copy_options::overwrite_existing);
  EXPECT_TRUE(LoadTokenizerForModel(*stories, copy).ok());
}

TEST(StrategyBindingTest, AStrategyBoundToV1IsRecognisedAndRebindsOnRequest) {
  std::unique_ptr<Model> stories = LoadOrDie(testing::Asset("stories260K.bin"));
  ASSERT_NE(stories, nullptr);
  const std::vector<int> kv_source = {0, 1, 1, 3, 3};
  auto old = SharingStrategy::Create(kv_source, kStoriesV1);
  ASSERT_TRUE(old.ok()) << old.status();
  old->provenance().note = "made before v2";

  absl::Status refused = ValidateStrategyForModel(*old, *stories);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("bound to fingerprint v1"));
  EXPECT_THAT(refused.message(), HasSubstr("kvshare rebind --strategy"));

  auto rebound = RebindStrategy(*old, *stories);
  ASSERT_TRUE(rebound.ok()) << rebound.status();
  EXPECT_EQ(rebound->model_fingerprint(), kStoriesV2);
  EXPECT_EQ(rebound->kv_source(), kv_source);
  EXPECT_EQ(rebound->provenance().note, "made before v2");
  EXPECT_TRUE(ValidateStrategyForModel(*rebound, *stories).ok());
  // Re-binding a current strategy changes nothing.
  auto again = RebindStrategy(*rebound, *stories);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id(), rebound->id());
}

TEST(StrategyBindingTest, AnotherModelsStrategyIsNeitherAcceptedNorRebound) {
  std::unique_ptr<Model> stories = LoadOrDie(testing::Asset("stories260K.bin"));
  ASSERT_NE(stories, nullptr);
  auto foreign = SharingStrategy::Create({0, 1, 2, 3, 4}, kSmolLm2V1);
  ASSERT_TRUE(foreign.ok());
  absl::Status s = ValidateStrategyForModel(*foreign, *stories);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), ::testing::Not(HasSubstr("v1")));
  auto rebound = RebindStrategy(*foreign, *stories);
  EXPECT_EQ(rebound.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(rebound.status().message(), HasSubstr("cannot be re-bound"));
}

}  // namespace
}  // namespace kvshare
