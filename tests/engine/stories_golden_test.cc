// stories260K (llama2.c checkpoint) against ../shared/assets/GOLDEN.md — values computed
// outside this project by llama2.c run.c and a float64 implementation — and against
// tests/reference/stories260k_reference.json (tests/reference/stories_reference.py, numpy).
#include <cmath>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/generate.h"
#include "common/engine/perplexity.h"
#include "common/engine/sampler.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

class StoriesGoldenTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto tok = LoadLlama2cTokenizer(testing::Asset("tok512.bin"), model_->config().vocab_size);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    auto engine = Engine::Create(*model_, MakeCpuBackend(/*threads=*/GetParam()));
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
};

TEST_P(StoriesGoldenTest, ArgmaxAfterBosIsOnceWithGoldenLogit) {
  auto seq = engine_->AddSequence();
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  ASSERT_TRUE(engine_->Prefill(*seq, std::vector<int32_t>{1}, &logits).ok());
  const auto best = std::max_element(logits.begin(), logits.end()) - logits.begin();
  EXPECT_EQ(best, 403);
  EXPECT_NEAR(logits[403], 17.023516, 2e-5);
}

TEST_P(StoriesGoldenTest, GreedyGenerationMatchesGoldenTextAndIds) {
  const std::vector<int32_t> prompt = tokenizer_->Encode("Once upon a time", /*add_bos=*/true);
  ASSERT_THAT(prompt, ::testing::ElementsAre(1, 403, 407, 261, 378));
  GenerateOptions options;
  options.max_tokens = 28;  // positions 0..31 counted the llama2.c way
  auto result = Generate(*engine_, *tokenizer_, prompt, options);
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<int32_t> golden = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
                                       426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
                                       411, 322, 265, 282, 295, 433, 426, 385};
  EXPECT_EQ(result->tokens, golden);
  EXPECT_EQ(tokenizer_->Decode(prompt) + result->text,
            "Once upon a time, there was a little girl named Lily. She loved to play outside in "
            "the park. One");
  EXPECT_EQ(engine_->kv_cache().used_blocks(), 0) << "Generate must free its sequence";
}

TEST_P(StoriesGoldenTest, MeanNllOfTinyStoriesSampleMatchesGolden) {
  std::string text =
      testing::ReadFileOrDie(testing::Asset("tinystories-sample.txt")).substr(0, 6000);
  text.resize(text.rfind(' '));  // cut at the last ASCII space
  std::vector<int32_t> ids = tokenizer_->Encode(text, /*add_bos=*/true);
  ASSERT_GE(ids.size(), 512u);
  ids.resize(512);
  PerplexityOptions options;
  options.context = 512;
  options.stride = 512;
  auto r = EvaluatePerplexity(*engine_, ids, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens_scored, 511);
  EXPECT_NEAR(r->mean_nll, 1.469339906, 1e-5);
  EXPECT_NEAR(r->perplexity(), 4.346365, 1e-4);

  // Two windows of 256: every target once — the first window's last row scores token 256 (the
  // second window holds no row before it), so window 0 scores targets 1..256 with exactly the
  // context the single window gave them (causal attention), and window 1 targets 257..511.
  std::vector<float> logits;
  auto seq = engine_->AddSequence();
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE(engine_->Prefill(*seq, ids, &logits, /*all_logits=*/true).ok());
  engine_->RemoveSequence(*seq);
  const int vocab = engine_->config().vocab_size;
  double first_256 = 0;
  for (int t = 1; t <= 256; ++t) {
    first_256 -= LogProb(absl::MakeConstSpan(logits.data() + size_t(t - 1) * vocab, vocab), ids[t]);
  }
  options.context = 256;
  options.stride = 256;
  auto two = EvaluatePerplexity(*engine_, ids, options);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->tokens_scored, 511);
  EXPECT_THAT(two->window_targets, ::testing::ElementsAre(256, 255));
  EXPECT_NEAR(two->window_nll_sums[0], first_256, 1e-3);
  EXPECT_NEAR(two->mean_nll, (two->window_nll_sums[0] + two->window_nll_sums[1]) / 511, 1e-12);
}

TEST_P(StoriesGoldenTest, AllLogitsAtLastPromptPositionMatchNumpyReference) {
  const auto ref = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/stories260k_reference.json")));
  const std::vector<int32_t> ids = ref["prompt"]["ids"].get<std::vector<int32_t>>();
  const std::vector<double> expected = ref["prompt"]["logits"].get<std::vector<double>>();
  auto seq = engine_->AddSequence();
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  ASSERT_TRUE(engine_->Prefill(*seq, ids, &logits).ok());
  ASSERT_EQ(logits.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(logits[i], expected[i], 2e-5 * std::max(1.0, std::abs(expected[i]))) << "id " << i;
  }
}

TEST_P(StoriesGoldenTest, TokenByTokenDecodeEqualsPrefillNll) {
  // The incremental (decode) path must score the same text as batched prefill.
  const auto ref = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/stories260k_reference.json")));
  const std::vector<int32_t> ids = ref["nll"]["ids"].get<std::vector<int32_t>>();
  const std::vector<double> per_pos =
      ref["nll"]["per_position_nll_first64"].get<std::vector<double>>();
  auto seq = engine_->AddSequence();
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  for (size_t t = 0; t < per_pos.size(); ++t) {
    StepInput in{*seq, absl::MakeConstSpan(&ids[t], 1), false};
    ASSERT_TRUE(engine_->Step({in}, &logits).ok());
    EXPECT_NEAR(-LogProb(logits, ids[t + 1]), per_pos[t], 1e-4) << "position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, StoriesGoldenTest, ::testing::Values(1, 2),
                         [](const auto& info) { return "threads" + std::to_string(info.param); });

}  // namespace
}  // namespace kvshare
