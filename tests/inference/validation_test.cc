// Malformed Generate requests are INVALID_ARGUMENT with a message naming the field, the value
// and the limit; requests that can never fit say by how much; and the worker keeps serving.
#include <string>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/inference/worker_fixture.h"

namespace kvshare {
namespace {

using ::testing::AllOf;
using testing::Collect;
using ::testing::HasSubstr;
using testing::LoopbackWorker;

class ValidationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    WorkerOptions o = testing::StoriesWorkerOptions();
    o.limits.max_tokens_limit = 300;
    o.kv_budget_bytes = 50 * 4096;  // 50 blocks of 16 tokens (4 KiB each for stories260K)
    o.limits.default_max_tokens = 100;
    worker_ = LoopbackWorker::Start(o).release();
  }
  static void TearDownTestSuite() { delete worker_; }
  void SetUp() override { ASSERT_NE(worker_, nullptr); }

  static v1::GenerateRequest Valid() {
    v1::GenerateRequest r;
    r.set_text("Once upon a time");
    r.set_max_tokens(8);
    return r;
  }
  // The status of `r`, which must be refused before any message.
  static grpc::Status Refusal(const v1::GenerateRequest& r) {
    const testing::Streamed got = Collect(*worker_->stub, r);
    EXPECT_FALSE(got.got_start) << "a refused request got a start message";
    return got.status;
  }
  static LoopbackWorker* worker_;
};
LoopbackWorker* ValidationTest::worker_ = nullptr;

#define EXPECT_INVALID(request, ...)                                \
  do {                                                              \
    const grpc::Status s_ = Refusal(request);                       \
    EXPECT_EQ(s_.error_code(), grpc::StatusCode::INVALID_ARGUMENT); \
    EXPECT_THAT(s_.error_message(), AllOf(__VA_ARGS__));            \
  } while (0)

TEST_F(ValidationTest, NoPromptNamesThePrompt) {
  v1::GenerateRequest r = Valid();
  r.clear_prompt();
  EXPECT_INVALID(r, HasSubstr("prompt"));
  r.set_text("");
  EXPECT_INVALID(r, HasSubstr("text"), HasSubstr("empty"));
  r.mutable_token_ids();
  EXPECT_INVALID(r, HasSubstr("token_ids"), HasSubstr("empty"));
}

TEST_F(ValidationTest, MaxTokensZeroOrBeyondTheLimitNamesFieldValueAndLimit) {
  v1::GenerateRequest r = Valid();
  r.set_max_tokens(0);
  EXPECT_INVALID(r, HasSubstr("max_tokens 0"), HasSubstr("[1, 300]"));
  r.set_max_tokens(1000000);
  EXPECT_INVALID(r, HasSubstr("max_tokens 1000000"), HasSubstr("[1, 300]"));
  r.set_max_tokens(-3);
  EXPECT_INVALID(r, HasSubstr("max_tokens -3"));
}

TEST_F(ValidationTest, SamplingParametersOutsideTheirRangesNameTheField) {
  v1::GenerateRequest r = Valid();
  r.set_top_p(0.0f);
  EXPECT_INVALID(r, HasSubstr("top_p 0"), HasSubstr("(0, 1]"));
  r.set_top_p(1.5f);
  EXPECT_INVALID(r, HasSubstr("top_p 1.5"), HasSubstr("(0, 1]"));
  r = Valid();
  r.set_temperature(-0.5f);
  EXPECT_INVALID(r, HasSubstr("temperature -0.5"), HasSubstr("[0, 100]"));
  r = Valid();
  r.set_top_k(100000);
  EXPECT_INVALID(r, HasSubstr("top_k 100000"), HasSubstr("[0, 512]"));
  r = Valid();
  r.set_logprobs(50);
  EXPECT_INVALID(r, HasSubstr("logprobs 50"), HasSubstr("[0, 20]"));
}

TEST_F(ValidationTest, TokenIdsOutOfTheVocabularyNameTheIndex) {
  v1::GenerateRequest r = Valid();
  r.mutable_token_ids()->add_ids(1);
  r.mutable_token_ids()->add_ids(512);
  EXPECT_INVALID(r, HasSubstr("token_ids.ids[1] = 512"), HasSubstr("[0, 512)"));
}

TEST_F(ValidationTest, ChatOnAModelWithoutATemplateIsRefused) {
  v1::GenerateRequest r = Valid();
  auto* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("hi");
  EXPECT_INVALID(r, HasSubstr("chat"));
  m->set_role("robot");
  EXPECT_INVALID(r, HasSubstr("chat.messages[0].role \"robot\""));
}

TEST_F(ValidationTest, UnknownStrategyVersionIsAFailedPreconditionNamingWhatIsHeld) {
  v1::GenerateRequest r = Valid();
  r.set_strategy_version(42);
  const grpc::Status s = Refusal(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), AllOf(HasSubstr("strategy_version 42"), HasSubstr("held: [1]")));
  r.set_strategy_version(1);
  EXPECT_TRUE(Collect(*worker_->stub, r).status.ok());
}

TEST_F(ValidationTest, ARequestBeyondTheContextOrThePoolSaysByHowMuch) {
  v1::GenerateRequest r = Valid();
  const auto prompt = worker_->worker->tokenizer().Encode("Once upon a time", true);
  const int p = static_cast<int>(prompt.size());
  // The whole pool: 50 blocks of 16 tokens, 5 owning layers -> 160 tokens; 300 never fit.
  r.set_max_tokens(300 - p);
  EXPECT_INVALID(
      r, HasSubstr(absl::StrFormat("prompt (%d tokens) + max_tokens (%d) = 300", p, 300 - p)),
      HasSubstr("need 95 KV blocks (95 f32)"),
      HasSubstr("the whole pool (50 f32 blocks) holds 160 tokens under this strategy"));
  // Beyond the model's context (512) -- checked before the pool.
  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += "Once upon a time ";
  r.set_text(long_text);
  r.set_max_tokens(10);
  EXPECT_INVALID(r, HasSubstr("exceeds the model's context of 512 tokens"));
  // And the worker still serves.
  EXPECT_TRUE(Collect(*worker_->stub, Valid()).status.ok());
  EXPECT_GE(worker_->metrics->requests_value("invalid_argument"), 2);
}

TEST_F(ValidationTest, UnsetOptionalFieldsTakeTheDefaults) {
  v1::GenerateRequest r;
  r.set_text("Once upon a time");  // no max_tokens: the worker's default (capped by the limit)
  const testing::Streamed got = Collect(*worker_->stub, r);
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_LE(got.end.usage().completion_tokens(), 100);
}

}  // namespace
}  // namespace kvshare
