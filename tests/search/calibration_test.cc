// The calibration set rule (docs/METHOD.md §2): the first N lines that tokenise to at least T
// tokens (BOS counted when the tokenizer adds one), each truncated to exactly T; too few such
// lines is an error, never a smaller set. Checked with a word-per-token fake tokenizer so the
// token counts are obvious from the text.
#include "search_service/calibration.h"

#include <cstdio>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// One token per whitespace-separated word: the word's length + 10. BOS = 1.
class WordTokenizer : public Tokenizer {
 public:
  explicit WordTokenizer(bool add_bos) : add_bos_(add_bos) {}
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(1);
    size_t i = 0;
    while (i < text.size()) {
      while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
      size_t j = i;
      while (j < text.size() && text[j] != ' ' && text[j] != '\t') ++j;
      if (j > i) ids.push_back(static_cast<int32_t>(10 + j - i));
      i = j;
    }
    return ids;
  }
  std::string DecodeToken(int32_t, int32_t) const override { return ""; }
  int vocab_size() const override { return 100; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  bool add_bos_by_default() const override { return add_bos_; }
  bool IsEndOfGeneration(int32_t id) const override { return id == 2; }
  absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>&,
                                                bool) const override {
    return absl::UnimplementedError("none");
  }

 private:
  bool add_bos_;
};

CalibrationOptions Options(int samples, int tokens) {
  CalibrationOptions o;
  o.samples = samples;
  o.tokens = tokens;
  return o;
}

TEST(CalibrationSetTest, TakesTheFirstLinesLongEnoughAndTruncatesThem) {
  const WordTokenizer tok(/*add_bos=*/true);
  // With BOS, a line needs 2 words for T = 3.
  const std::string text =
      "a\n"           // 2 tokens: too short
      "bb ccc\n"      // 3: taken as is
      "\n"            // BOS only
      "d ee fff g\n"  // 5: truncated to 3
      "hh iii\r\n"    // 3 (the \r is not part of the line)
      "jjjj k\n";     // not needed
  auto set = BuildCalibrationSet(text, tok, Options(3, 3), "text");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->samples, 3);
  EXPECT_EQ(set->tokens, 3);
  EXPECT_THAT(set->ids, ElementsAre(1, 12, 13, 1, 11, 12, 1, 12, 13));
  EXPECT_THAT(set->source_lines, ElementsAre(2, 4, 5));
  EXPECT_EQ(set->hash.size(), 64u);
}

TEST(CalibrationSetTest, WithoutBosTheLineItselfMustHoldTTokens) {
  const WordTokenizer tok(/*add_bos=*/false);
  auto set = BuildCalibrationSet("a b\nc d e\nf g h i\n", tok, Options(2, 3), "text");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT(set->ids, ElementsAre(11, 11, 11, 11, 11, 11));
  EXPECT_THAT(set->source_lines, ElementsAre(2, 3));
}

TEST(CalibrationSetTest, TheHashIdentifiesTheTokenWindowsNotTheText) {
  const WordTokenizer tok(true);
  auto a = BuildCalibrationSet("x yy zzz\n", tok, Options(1, 3), "a");
  auto same_ids = BuildCalibrationSet("\np qq rrr tail\n", tok, Options(1, 3), "b");
  auto other_ids = BuildCalibrationSet("x yyy zzz\n", tok, Options(1, 3), "c");
  auto other_shape = BuildCalibrationSet("x yy zzz\n", tok, Options(1, 2), "d");
  ASSERT_TRUE(a.ok() && same_ids.ok() && other_ids.ok() && other_shape.ok());
  EXPECT_EQ(a->hash, same_ids->hash);
  EXPECT_NE(a->hash, other_ids->hash);
  EXPECT_NE(a->hash, other_shape->hash);
}

TEST(CalibrationSetTest, TooFewQualifyingLinesIsAnErrorSayingHowManyWereFound) {
  const WordTokenizer tok(true);
  auto set = BuildCalibrationSet("a b c\nd\ne f g\nh\n", tok, Options(3, 4), "file x.txt");
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(set.status().message()),
              HasSubstr("file x.txt: only 2 of its 4 lines tokenise to at least 4 tokens (BOS "
                        "counted); the calibration set needs 3"));
}

TEST(CalibrationSetTest, LinesThatTokeniseToNothingAreAnError) {
  const WordTokenizer tok(true);
  auto set = BuildCalibrationSet("\n  \n\t\n", tok, Options(1, 1), "blank.txt");
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(std::string(set.status().message()),
              HasSubstr("blank.txt: none of its 3 lines tokenises to any token"));
}

TEST(CalibrationSetTest, NonPositiveSizesAreErrors) {
  const WordTokenizer tok(true);
  EXPECT_THAT(std::string(BuildCalibrationSet("a b", tok, Options(0, 2), "t").status().message()),
              HasSubstr("samples 0 must be >= 1"));
  EXPECT_THAT(std::string(BuildCalibrationSet("a b", tok, Options(1, -3), "t").status().message()),
              HasSubstr("tokens -3 must be >= 1"));
}

TEST(CalibrationSetTest, MissingAndEmptyFilesAreErrorsNamingThePath) {
  const WordTokenizer tok(true);
  auto missing = LoadCalibrationSet("/nonexistent/calib.txt", tok, Options(1, 1));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/calib.txt"));
  const std::string empty = ::testing::TempDir() + "/empty_calibration.txt";
  std::ofstream(empty).close();
  auto e = LoadCalibrationSet(empty, tok, Options(1, 1));
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("is empty"));
  std::remove(empty.c_str());
}

TEST(KvAveragerTest, AveragesEachLayerElementwiseOverInputs) {
  ModelConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  KvAverager avg(c, /*tokens=*/2);
  const float k0[] = {1, 2, 3, 4}, v0[] = {0, 0, 0, 8};
  const float k1[] = {3, 2, 1, 0}, v1[] = {2, 2, 2, 2};
  for (int layer = 0; layer < 2; ++layer) {
    avg.OnKv(layer, 0, k0, v0, 2);
    avg.OnKv(layer, 1, k1, v1, 2);
  }
  auto r = avg.Result();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->k[1], ElementsAre(2, 2, 2, 2));
  EXPECT_THAT(r->v[0], ElementsAre(1, 1, 1, 5));
}

TEST(KvAveragerTest, ALayerThatDidNotOwnEveryInputIsAnError) {
  ModelConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 1;
  c.head_dim = 1;
  KvAverager avg(c, 1);
  const float x[] = {1};
  avg.OnKv(0, 0, x, x, 1);
  EXPECT_EQ(avg.Result().status().code(), absl::StatusCode::kFailedPrecondition);
  KvAverager partial(c, 2);
  partial.OnKv(0, 0, x, x, 1);
  partial.OnKv(1, 0, x, x, 1);
  EXPECT_EQ(partial.Result().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvshare
