// KV plans in the worker (issue 17): a version whose plan names a type the worker's pool cannot
// hold is refused with the layer and the types it holds (stories260K: head_dim 8 rules out
// int4; a CUDA worker, f16 and f32 only, refuses int8 the same way), and the scheduler admits
// sequences of plans with different types into one pool by the exact per-type count — every
// admitted request runs to its end (no step ever finds the pool short) and no more run at once
// than the pages allow.
#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inference_service/inference_worker.h"
#include "inference_service/scheduler.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::shared_ptr<const SharingStrategy> Plan(const Model& m, std::vector<KvType> types) {
  auto s = SharingStrategy::Identity(m.config().n_layers, m.fingerprint()).WithKvTypes(types);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::make_shared<const SharingStrategy>(*s);
}

TEST(KvPlanWorkerTest, AVersionWhosePlanThePoolCannotHoldIsRefused) {
  WorkerOptions o;
  o.model_path = testing::Asset("stories260K.bin");
  o.threads = 1;
  o.kv_budget_bytes = 1 << 20;
  o.kv_type = KvType::kF16;
  auto w = InferenceWorker::Load(o, nullptr);
  ASSERT_TRUE(w.ok()) << w.status();
  auto model = Model::Load(o.model_path);
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  const KvType f16 = KvType::kF16, i4 = KvType::kInt4, i8 = KvType::kInt8;
  absl::Status refused = (*w)->strategies().Publish(2, Plan(m, {f16, i4, f16, f16, f16}));
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(),
              HasSubstr("stores layer 1's KV as int4; this KV pool holds only f32, f16, int8"));
  EXPECT_TRUE((*w)->strategies().Publish(3, Plan(m, {f16, i8, i8, f16, i8})).ok());
}

class Sink : public GenerationSink {
 public:
  void OnAccepted(const GenerationRequest&) override {}
  void OnToken(const SampledToken&) override {
    absl::MutexLock lock(&mu_);
    ++tokens_;
  }
  void OnFinished(const GenerationOutcome& outcome) override {
    absl::MutexLock lock(&mu_);
    outcome_ = outcome;
    finished_ = true;
  }
  bool IsCancelled() const override { return false; }
  bool WaitFinished() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&finished_), absl::Seconds(60));
  }
  GenerationOutcome outcome() const {
    absl::MutexLock lock(&mu_);
    return outcome_;
  }

 private:
  mutable absl::Mutex mu_;
  int tokens_ = 0;
  GenerationOutcome outcome_;
  bool finished_ = false;
};

TEST(KvPlanWorkerTest, PlansOfDifferentTypesAreAdmittedIntoOnePoolByTheExactCount) {
  auto model = Model::Load(testing::Asset("stories260K.bin"));
  ASSERT_TRUE(model.ok()) << model.status();
  auto tok = LoadTokenizerForModel(**model, "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // 20 f32 blocks of 4096 bytes = 4 pages of 20480 (LCM of 4096, 2048 and int8's 1280): a page
  // holds 5 f32 or 16 int8 blocks. A request of 16 + 16 tokens needs 2 blocks per layer: 10
  // int8 blocks (one page) under the int8 plan, 10 f32 blocks (two pages) under f32.
  EngineOptions eo;
  eo.max_step_rows = 64;
  eo.kv_pool_bytes = 20 * 4096;
  auto engine = Engine::Create(**model, MakeCpuBackend(2), eo);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_EQ((*engine)->kv_cache().kv_pool().page_bytes(), 20480);
  SchedulerOptions so;
  so.step_tokens = 64;
  so.max_batch = 8;
  so.max_queue = 16;
  auto scheduler = Scheduler::Create(std::move(*engine), **tok, so, nullptr);
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const KvType i8 = KvType::kInt8;
  const VersionedStrategy int8_plan{2, Plan(**model, {i8, i8, i8, i8, i8})};
  const VersionedStrategy plain{1, std::make_shared<const SharingStrategy>(
                                       SharingStrategy::Identity(5, (*model)->fingerprint()))};
  // int8, int8, f32 fit together (2 + 2 pages: 20 int8 blocks take 2 pages); a second f32
  // must wait.
  std::vector<Sink> sinks(6);
  const VersionedStrategy* order[6] = {&int8_plan, &int8_plan, &plain, &plain, &int8_plan, &plain};
  int most_running = 0;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r;
    r.id = absl::StrCat("r", i);
    for (int t = 0; t < 16; ++t) r.prompt.push_back(1 + (t * 37 + i) % 500);
    r.max_tokens = 16;
    r.ignore_eos = true;
    r.strategy = *order[i];
    ASSERT_TRUE((*scheduler)->Submit(std::move(r), &sinks[i]).ok());
    most_running = std::max(most_running, (*scheduler)->Load().running);
  }
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(sinks[i].WaitFinished()) << i;
    EXPECT_TRUE(sinks[i].outcome().status.ok()) << i << ": " << sinks[i].outcome().status;
    EXPECT_EQ(sinks[i].outcome().completion_tokens, 16) << i;
  }
  EXPECT_LE(most_running, 3);
  EXPECT_TRUE((*scheduler)->WaitUntilIdle(absl::Seconds(5)));
  EXPECT_EQ((*scheduler)->Load().kv_blocks_free, 20);

  // What one sequence can hold is counted per type too: 4 pages are 64 int8 blocks, 12 per
  // layer of 5, 192 tokens under the int8 plan (the pool's 20 f32 blocks would say 64).
  EXPECT_EQ((*scheduler)->CapacityTokens(*int8_plan.strategy), 192);
  EXPECT_EQ((*scheduler)->CapacityTokens(*plain.strategy), 64);
  Sink fits, too_long;
  GenerationRequest r;
  r.id = "fits";
  r.prompt.assign(16, 7);
  r.max_tokens = 192 - 16;
  r.ignore_eos = true;
  r.strategy = int8_plan;
  ASSERT_TRUE((*scheduler)->Submit(r, &fits).ok());
  ASSERT_TRUE(fits.WaitFinished());
  EXPECT_TRUE(fits.outcome().status.ok()) << fits.outcome().status;
  r.id = "too-long";
  r.max_tokens = 193 - 16;
  const absl::Status s = (*scheduler)->Submit(r, &too_long);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("193 tokens need 65 KV blocks (65 int8)"),
                    HasSubstr("the whole pool (20 f32 blocks) holds 192 tokens")));
}

}  // namespace
}  // namespace kvshare
