// A Generate stream from a real worker (SmolLM2-135M on loopback) carries exactly what the
// engine's own Generate loop produces for the same prompt, seed and strategy: the same token
// ids, the same text, the same finish; and the first/last messages describe the request.
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/generate.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/inference/worker_fixture.h"

namespace kvshare {
namespace {

using testing::Collect;
using testing::LoopbackWorker;
using testing::Streamed;

class GenerateStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    worker_ = LoopbackWorker::Start(testing::SmolLm2WorkerOptions()).release();
  }
  static void TearDownTestSuite() { delete worker_; }
  void SetUp() override { ASSERT_NE(worker_, nullptr); }

  const Model& model() { return worker_->worker->model(); }
  const Tokenizer& tokenizer() { return worker_->worker->tokenizer(); }

  // The engine's Generate on a fresh engine over the same model.
  GenerateResult Reference(const std::vector<int32_t>& prompt, const GenerateOptions& options) {
    auto engine = Engine::Create(model(), MakeCpuBackend(2));
    EXPECT_TRUE(engine.ok()) << engine.status();
    auto result = Generate(**engine, tokenizer(), prompt, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return *result;
  }

  static LoopbackWorker* worker_;
};
LoopbackWorker* GenerateStreamTest::worker_ = nullptr;

v1::FinishReason Wire(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void ExpectSame(const Streamed& got, const GenerateResult& want) {
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  ASSERT_TRUE(got.got_start && got.got_end);
  EXPECT_EQ(got.ids, want.tokens);
  EXPECT_EQ(got.text, want.text);
  EXPECT_EQ(got.end.finish_reason(), Wire(want.finish));
  EXPECT_EQ(got.end.usage().completion_tokens(), static_cast<int>(want.tokens.size()));
  EXPECT_EQ(got.end.usage().prompt_tokens(), got.start.prompt_tokens());
  EXPECT_EQ(got.end.usage().total_tokens(),
            got.start.prompt_tokens() + got.end.usage().completion_tokens());
}

TEST_F(GenerateStreamTest, GreedyTextPromptStreamsTheEnginesTokens) {
  v1::GenerateRequest r;
  r.set_text("The capital of France is");
  r.set_max_tokens(24);
  const Streamed got = Collect(*worker_->stub, r);
  const auto prompt = tokenizer().Encode(r.text(), tokenizer().add_bos_by_default());
  EXPECT_EQ(std::vector<int32_t>(got.start.prompt_token_ids().begin(),
                                 got.start.prompt_token_ids().end()),
            prompt);
  EXPECT_EQ(got.start.model_fingerprint(), model().fingerprint());
  EXPECT_EQ(got.start.strategy_version(), 1u);
  EXPECT_FALSE(got.start.request_id().empty());
  GenerateOptions options;
  options.max_tokens = 24;
  ExpectSame(got, Reference(prompt, options));
  EXPECT_GT(got.end.timings().time_to_first_token_seconds(), 0.0);
  EXPECT_GE(got.end.timings().decode_seconds(), 0.0);
}

TEST_F(GenerateStreamTest, SeededSamplingStreamsTheEnginesTokens) {
  v1::GenerateRequest r;
  r.set_text("Write a short poem about the sea.");
  r.set_max_tokens(32);
  r.set_temperature(0.8f);
  r.set_top_k(50);
  r.set_top_p(0.9f);
  r.set_seed(7);
  r.set_request_id("seeded-7");
  const Streamed got = Collect(*worker_->stub, r);
  EXPECT_EQ(got.start.request_id(), "seeded-7");
  GenerateOptions options;
  options.max_tokens = 32;
  options.sampling = {0.8f, 50, 0.9f, 7};
  ExpectSame(got,
             Reference(tokenizer().Encode(r.text(), tokenizer().add_bos_by_default()), options));
}

TEST_F(GenerateStreamTest, ChatPromptUsesTheModelsTemplateAndEndsLikeTheEngine) {
  v1::GenerateRequest r;
  auto* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("What is 2 + 2?");
  r.set_max_tokens(40);
  const Streamed got = Collect(*worker_->stub, r);
  auto text = tokenizer().ApplyChatTemplate({{"user", "What is 2 + 2?"}}, true);
  ASSERT_TRUE(text.ok());
  const auto prompt = tokenizer().Encode(*text, false);
  EXPECT_EQ(got.start.prompt_tokens(), static_cast<int>(prompt.size()));
  GenerateOptions options;
  options.max_tokens = 40;
  ExpectSame(got, Reference(prompt, options));
}

TEST_F(GenerateStreamTest, StopStringEndsTheStreamBeforeTheMatch) {
  v1::GenerateRequest r;
  r.set_text("The capital of France is");
  r.set_max_tokens(24);
  const Streamed full = Collect(*worker_->stub, r);
  ASSERT_GT(full.text.size(), 12u);
  // A stop string from the middle of the greedy text.
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  r.add_stop(stop);
  const Streamed got = Collect(*worker_->stub, r);
  EXPECT_EQ(got.end.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(got.text, full.text.substr(0, full.text.find(stop)));
  GenerateOptions options;
  options.max_tokens = 24;
  options.stop = {stop};
  ExpectSame(got,
             Reference(tokenizer().Encode(r.text(), tokenizer().add_bos_by_default()), options));
}

TEST_F(GenerateStreamTest, LogprobsGiveEachTokenAndItsMostLikelyAlternatives) {
  v1::GenerateRequest r;
  r.set_text("Once upon a time");
  r.set_max_tokens(8);
  r.set_logprobs(3);
  const Streamed got = Collect(*worker_->stub, r);
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  ASSERT_EQ(got.logprobs.size(), got.ids.size());
  for (size_t i = 0; i < got.ids.size(); ++i) {
    const v1::TokenLogProbs& lp = got.logprobs[i];
    EXPECT_EQ(lp.id(), got.ids[i]);
    ASSERT_EQ(lp.top_size(), 3);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(lp.top(0).id(), got.ids[i]);
    EXPECT_DOUBLE_EQ(lp.top(0).logprob(), lp.logprob());
    EXPECT_LE(lp.logprob(), 0.0);
    EXPECT_GE(lp.top(0).logprob(), lp.top(1).logprob());
    EXPECT_GE(lp.top(1).logprob(), lp.top(2).logprob());
  }
}

TEST_F(GenerateStreamTest, TokenIdPromptsAreUsedAsGiven) {
  const auto prompt = tokenizer().Encode("In a small village", true);
  v1::GenerateRequest r;
  r.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  r.set_max_tokens(10);
  GenerateOptions options;
  options.max_tokens = 10;
  ExpectSame(Collect(*worker_->stub, r), Reference(prompt, options));
}

}  // namespace
}  // namespace kvshare
