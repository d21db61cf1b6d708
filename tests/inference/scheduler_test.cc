// The scheduler on its own (no gRPC): decode rows go first and long prompts are prefilled in
// chunks in the rows left, so a decoder gets a token every step while a newcomer prefills;
// admission is first come, first served under the worst-case reservation; CancelAll ends
// everything with the given status and frees every block.
#include "inference_service/scheduler.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/model/model.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

// Records what the scheduler reports; can be told to cancel.
class RecordingSink : public GenerationSink {
 public:
  void OnAccepted(const GenerationRequest&) override {}
  void OnToken(const SampledToken& token) override {
    absl::MutexLock lock(&mu_);
    tokens_.push_back(token.id);
    if (observe_ != nullptr) token_counts_at_.push_back(observe_->tokens());
    if (observe_also_ != nullptr) also_counts_at_.push_back(observe_also_->tokens());
  }
  void OnFinished(const GenerationOutcome& outcome) override {
    absl::MutexLock lock(&mu_);
    outcome_ = outcome;
    finished_ = true;
  }
  bool IsCancelled() const override { return false; }

  int tokens() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(tokens_.size());
  }
  bool WaitFinished(absl::Duration timeout = absl::Seconds(30)) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&finished_), timeout);
  }
  GenerationOutcome outcome() const {
    absl::MutexLock lock(&mu_);
    return outcome_;
  }
  // With every token, also record how many tokens `other` had by then.
  void Observe(const RecordingSink* other, const RecordingSink* also = nullptr) {
    observe_ = other;
    observe_also_ = also;
  }
  std::vector<int> token_counts_at() const {
    absl::MutexLock lock(&mu_);
    return token_counts_at_;
  }
  std::vector<int> also_counts_at() const {
    absl::MutexLock lock(&mu_);
    return also_counts_at_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<int32_t> tokens_;
  std::vector<int> token_counts_at_, also_counts_at_;
  const RecordingSink* observe_ = nullptr;
  const RecordingSink* observe_also_ = nullptr;
  GenerationOutcome outcome_;
  bool finished_ = false;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto tok = LoadTokenizerForModel(*model_, "");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    identity_ = {1, std::make_shared<const SharingStrategy>(SharingStrategy::Identity(
                        model_->config().n_layers, model_->fingerprint()))};
  }

  std::unique_ptr<Scheduler> Make(int step_tokens, int max_batch, int64_t pool_blocks) {
    EngineOptions eo;
    eo.max_step_rows = step_tokens;
    eo.kv_pool_bytes =
        pool_blocks * 4096;  // a stories260K block: 16 tokens x 4 heads x 8 x 2 x 4 B
    auto engine = Engine::Create(*model_, MakeCpuBackend(2), eo);
    EXPECT_TRUE(engine.ok()) << engine.status();
    SchedulerOptions so;
    so.step_tokens = step_tokens;
    so.max_batch = max_batch;
    so.max_queue = 16;
    auto s = Scheduler::Create(std::move(*engine), *tokenizer_, so, nullptr);
    EXPECT_TRUE(s.ok()) << s.status();
    return std::move(*s);
  }

  GenerationRequest Request(int prompt_tokens, int max_tokens) {
    GenerationRequest r;
    r.id = "r";
    for (int i = 0; i < prompt_tokens; ++i) r.prompt.push_back(1 + (i * 37) % 500);
    r.max_tokens = max_tokens;
    r.strategy = identity_;
    r.ignore_eos = true;  // a fixed amount of work
    return r;
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  VersionedStrategy identity_;
};

TEST_F(SchedulerTest, DecodersGetATokenEveryStepWhileALongPromptIsPrefilledInChunks) {
  auto scheduler = Make(/*step_tokens=*/8, /*max_batch=*/4, /*pool_blocks=*/400);
  RecordingSink decoder, newcomer;
  ASSERT_TRUE(scheduler->Submit(Request(4, 400), &decoder).ok());
  while (decoder.tokens() < 3) absl::SleepFor(absl::Microseconds(200));
  // 70 prompt tokens with 7 rows a step left by the one decoder: 10 prefill steps.
  newcomer.Observe(&decoder);
  const int before = decoder.tokens();
  ASSERT_TRUE(scheduler->Submit(Request(70, 2), &newcomer).ok());
  ASSERT_TRUE(newcomer.WaitFinished());
  const int at_first_token = newcomer.token_counts_at().at(0);
  EXPECT_GE(at_first_token - before, 10) << "the decoder must not stall during the prefill";
  EXPECT_TRUE(decoder.WaitFinished());
  EXPECT_EQ(decoder.outcome().completion_tokens, 400);
  EXPECT_TRUE(scheduler->WaitUntilIdle(absl::Seconds(5)));
  EXPECT_EQ(scheduler->Load().kv_blocks_free, 400);
}

TEST_F(SchedulerTest, AdmissionReservesTheWorstCaseAndServesFirstComeFirst) {
  // 100 blocks; each request needs ceil((16 + 144) / 16) = 10 blocks x 5 layers = 50.
  auto scheduler = Make(32, 8, 100);
  RecordingSink a, b, c;
  c.Observe(&a, &b);
  ASSERT_TRUE(scheduler->Submit(Request(16, 144), &a).ok());
  ASSERT_TRUE(scheduler->Submit(Request(16, 144), &b).ok());
  ASSERT_TRUE(scheduler->Submit(Request(16, 144), &c).ok());
  const SchedulerLoad load = scheduler->Load();
  EXPECT_LE(load.running, 2);
  EXPECT_LE(load.kv_blocks_reserved, 100);
  ASSERT_TRUE(c.WaitFinished());
  ASSERT_TRUE(a.WaitFinished());
  ASSERT_TRUE(b.WaitFinished());
  // c waited for a whole request's blocks: its first token came only after a or b had all 144
  // of theirs (an order of events, not a timing).
  ASSERT_FALSE(c.token_counts_at().empty());
  EXPECT_EQ(std::max(c.token_counts_at()[0], c.also_counts_at()[0]), 144)
      << "a had " << c.token_counts_at()[0] << ", b had " << c.also_counts_at()[0];
  for (const auto* s : {&a, &b, &c}) {
    EXPECT_TRUE(s->outcome().status.ok());
    EXPECT_EQ(s->outcome().completion_tokens, 144);
  }
}

TEST_F(SchedulerTest, CancelAllEndsEverySequenceWithItsStatusAndFreesTheBlocks) {
  auto scheduler = Make(32, 2, 200);
  RecordingSink a, b, queued;
  ASSERT_TRUE(scheduler->Submit(Request(8, 400), &a).ok());
  ASSERT_TRUE(scheduler->Submit(Request(8, 400), &b).ok());
  ASSERT_TRUE(scheduler->Submit(Request(8, 400), &queued).ok());  // max_batch 2: waits
  while (a.tokens() < 2) absl::SleepFor(absl::Microseconds(200));
  scheduler->CancelAll(absl::UnavailableError("drain grace ran out"));
  for (auto* s : {&a, &b, &queued}) {
    ASSERT_TRUE(s->WaitFinished());
    EXPECT_EQ(s->outcome().finish, FinishReason::kCancelled);
    EXPECT_EQ(s->outcome().status.code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(queued.tokens(), 0);
  EXPECT_TRUE(scheduler->WaitUntilIdle(absl::Seconds(5)));
  EXPECT_EQ(scheduler->Load().kv_blocks_free, 200);
  RecordingSink late;
  EXPECT_EQ(scheduler->Submit(Request(8, 4), &late).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvshare
