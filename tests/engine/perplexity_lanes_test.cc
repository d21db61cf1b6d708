// EvaluatePerplexity over several engines (perplexity.h's lanes) scores exactly what one
// engine scores: the same window sums bit for bit, the same progress calls, the same stop.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

class PerplexityLanesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto tok = LoadLlama2cTokenizer(testing::Asset("tok512.bin"), model_->config().vocab_size);
    ASSERT_TRUE(tok.ok()) << tok.status();
    ids_ = (*tok)->Encode(testing::ReadFileOrDie(testing::Asset("tinystories-sample.txt")),
                          /*add_bos=*/true);
    ASSERT_GE(ids_.size(), 1400u);
    ids_.resize(1400);
  }

  std::unique_ptr<Engine> MakeEngine(int threads) {
    EngineOptions eo;
    eo.kv_type = KvType::kF16;
    eo.max_step_rows = 256;
    auto engine = Engine::Create(*model_, MakeCpuBackend(threads), eo);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  std::unique_ptr<Model> model_;
  std::vector<int32_t> ids_;
};

TEST_F(PerplexityLanesTest, ThreeLanesScoreWhatOneEngineScores) {
  // Overlapping windows (stride < context) of a text whose 7 windows are no multiple of 3
  // lanes: the window plan and the last, partial round are both exercised.
  PerplexityOptions options;
  options.context = 256;
  options.stride = 200;
  auto one = MakeEngine(/*threads=*/2);
  std::vector<std::pair<int64_t, int64_t>> one_progress, lanes_progress;
  auto expected = EvaluatePerplexity(*one, ids_, options, [&](int64_t done, int64_t total) {
    one_progress.emplace_back(done, total);
  });
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_EQ(expected->window_targets.size(), 7u);
  // Counted by hand: windows start at 0, 200, ..., 1200 (the one at 1200 scores up to 1399).
  EXPECT_EQ(PerplexityWindows(1400, 256, 200), 7);
  EXPECT_EQ(PerplexityWindows(16385, 512, 512), 32);  // the search's slice: 16,384 targets
  EXPECT_EQ(expected->tokens_scored, 1399);

  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<Engine*> lanes;
  for (int lane = 0; lane < 3; ++lane) {
    engines.push_back(MakeEngine(/*threads=*/1));
    lanes.push_back(engines.back().get());
  }
  auto got = EvaluatePerplexity(lanes, ids_, options, [&](int64_t done, int64_t total) {
    lanes_progress.emplace_back(done, total);
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->window_targets, expected->window_targets);
  EXPECT_EQ(got->window_nll_sums, expected->window_nll_sums);  // bit for bit
  EXPECT_EQ(got->mean_nll, expected->mean_nll);
  EXPECT_EQ(got->tokens_scored, expected->tokens_scored);
  EXPECT_EQ(lanes_progress, one_progress);
  for (Engine* e : lanes) EXPECT_EQ(e->kv_cache().used_blocks(), 0) << "windows must be freed";
}

TEST_F(PerplexityLanesTest, StopEarlyEndsAtTheSameWindowInsideARound) {
  PerplexityOptions options;
  options.context = 256;
  options.stride = 256;
  // Stop once 4 windows are in: with 3 lanes, the second round's first window.
  options.stop_early = [](const PerplexityResult& so_far) {
    return so_far.window_nll_sums.size() == 4;
  };
  auto one = MakeEngine(2);
  auto expected = EvaluatePerplexity(*one, ids_, options);
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<Engine*> lanes;
  for (int lane = 0; lane < 3; ++lane) {
    engines.push_back(MakeEngine(1));
    lanes.push_back(engines.back().get());
  }
  auto got = EvaluatePerplexity(lanes, ids_, options);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->window_nll_sums.size(), 4u);
  EXPECT_EQ(got->window_nll_sums, expected->window_nll_sums);
  EXPECT_EQ(got->tokens_scored, 4 * 256);
}

TEST_F(PerplexityLanesTest, ErrorsNameWhatIsWrong) {
  PerplexityOptions options;
  auto none = EvaluatePerplexity(absl::Span<Engine* const>(), ids_, options);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()), ::testing::HasSubstr("no engine"));

  // Cancelled before the first round: nothing is run.
  auto a = MakeEngine(1), b = MakeEngine(1);
  Engine* lanes[] = {a.get(), b.get()};
  std::atomic<bool> cancel{true};
  options.context = 256;
  options.stride = 256;
  options.cancel = &cancel;
  auto cancelled = EvaluatePerplexity(lanes, ids_, options);
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace kvshare
