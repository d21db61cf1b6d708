// Admission by KV capacity, the bounded queue, and stopping work: a full queue answers
// RESOURCE_EXHAUSTED at once and the worker keeps serving; client cancellation and deadlines
// stop a sequence at the next step and every KV block comes back; a strategy that shares
// layers admits more sequences into the same pool; a new strategy version applies to new
// requests while in-flight ones keep theirs. SmolLM2 (slow enough on a CPU that a long
// request is reliably still running when the test acts on it).
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/inference/worker_fixture.h"

namespace kvshare {
namespace {

using testing::Collect;
using testing::LoopbackWorker;
using testing::Streamed;

// A stream the test reads by hand.
struct OpenStream {
  std::unique_ptr<grpc::ClientContext> ctx = std::make_unique<grpc::ClientContext>();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  v1::GenerateStart start;
  int tokens = 0;

  OpenStream(v1::InferenceService::Stub& stub, const v1::GenerateRequest& r,
             absl::Duration timeout = absl::InfiniteDuration()) {
    if (timeout != absl::InfiniteDuration()) {
      ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
    reader = stub.Generate(ctx.get(), r);
  }
  // Reads until the first token (true) or the stream's end (false).
  bool ReadFirstToken() {
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_start()) start = msg.start();
      if (msg.has_chunk()) {
        tokens += msg.chunk().token_ids_size();
        return true;
      }
    }
    const grpc::Status status = reader->Finish();
    ADD_FAILURE() << "stream ended before a token: " << status.error_message();
    return false;
  }
  grpc::Status CancelAndFinish() {
    ctx->TryCancel();
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    return reader->Finish();
  }
};

v1::GenerateRequest Long() {
  v1::GenerateRequest r;
  r.set_text("Once upon a time, in a land far away, there lived a");
  r.set_max_tokens(1000);  // 63 blocks x 30 layers: fits the 64 MiB test pool (2730 blocks)
  return r;
}

v1::GenerateRequest Short() {
  v1::GenerateRequest r;
  r.set_text("Hello");
  r.set_max_tokens(3);
  return r;
}

// Polls GetLoad until `pred` holds (true) or 10 s pass.
template <typename Pred>
bool WaitForLoad(LoopbackWorker& w, Pred pred) {
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end) {
    if (pred(w.GetLoad())) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

TEST(AdmissionTest, FullQueueIsResourceExhaustedAtOnceAndTheWorkerKeepsServing) {
  WorkerOptions o = testing::SmolLm2WorkerOptions();
  o.scheduler.max_batch = 1;
  o.scheduler.max_queue = 1;
  auto w = LoopbackWorker::Start(o);
  ASSERT_NE(w, nullptr);

  OpenStream running(*w->stub, Long());
  ASSERT_TRUE(running.ReadFirstToken());
  OpenStream queued(*w->stub, Long());
  ASSERT_TRUE(WaitForLoad(*w, [](const v1::GetLoadResponse& l) { return l.queued() == 1; }));

  const absl::Time t0 = absl::Now();
  const Streamed refused = Collect(*w->stub, Short());
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("queue full"), std::string::npos)
      << refused.status.error_message();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2)) << "refusal must not wait for capacity";
  EXPECT_EQ(w->metrics->requests_value("resource_exhausted"), 1);

  // A queued request cancelled before admission leaves the queue; then the running one.
  EXPECT_EQ(queued.CancelAndFinish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(running.CancelAndFinish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(w->WaitForEmptyPool());
  const Streamed after = Collect(*w->stub, Short());
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.end.finish_reason(), v1::FINISH_REASON_LENGTH);
}

TEST(AdmissionTest, ClientCancellationStopsTheSequenceAndFreesEveryBlock) {
  auto w = LoopbackWorker::Start(testing::SmolLm2WorkerOptions());
  ASSERT_NE(w, nullptr);
  const int64_t total = w->GetLoad().kv_blocks_total();
  OpenStream s(*w->stub, Long());
  ASSERT_TRUE(s.ReadFirstToken());
  const v1::GetLoadResponse busy = w->GetLoad();
  EXPECT_EQ(busy.running(), 1);
  EXPECT_GT(busy.kv_blocks_used(), 0);
  EXPECT_GT(busy.kv_blocks_reserved(), 0);
  EXPECT_EQ(s.CancelAndFinish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(w->WaitForEmptyPool());
  EXPECT_EQ(w->GetLoad().kv_blocks_free(), total);
  EXPECT_EQ(w->metrics->requests_value("cancelled"), 1);
  EXPECT_EQ(w->metrics->requests_value("length"), 0);
}

TEST(AdmissionTest, DeadlineStopsTheSequenceAndFreesEveryBlock) {
  auto w = LoopbackWorker::Start(testing::SmolLm2WorkerOptions());
  ASSERT_NE(w, nullptr);
  const int64_t total = w->GetLoad().kv_blocks_total();
  OpenStream s(*w->stub, Long(), absl::Milliseconds(1500));
  ASSERT_TRUE(s.ReadFirstToken());
  v1::GenerateResponse msg;
  while (s.reader->Read(&msg)) {
  }
  EXPECT_EQ(s.reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(w->WaitForEmptyPool());
  EXPECT_EQ(w->GetLoad().kv_blocks_free(), total);
  EXPECT_EQ(w->metrics->requests_value("deadline_exceeded"), 1);
}

// The 8-of-30 strategy of the serving benchmark: layers 29->28, 27->26, ..., 15->14.
std::shared_ptr<const SharingStrategy> EightOfThirty(const Model& model) {
  std::vector<int> kv_source(30);
  for (int l = 0; l < 30; ++l) kv_source[l] = (l >= 15 && l % 2 == 1) ? l - 1 : l;
  auto s = SharingStrategy::Create(kv_source, model.fingerprint());
  EXPECT_TRUE(s.ok()) << s.status();
  return std::make_shared<const SharingStrategy>(*s);
}

TEST(AdmissionTest, SharingLayersAdmitsMoreSequencesIntoTheSamePool) {
  // Each request: prompt + max_tokens <= 256 tokens = 16 blocks per owning layer: 480 blocks
  // unshared, 352 with 22 owning layers. 1440 blocks admit 3 unshared, 4 shared.
  WorkerOptions o = testing::SmolLm2WorkerOptions();
  o.kv_budget_bytes = 1440LL * 16 * 2 * 3 * 64 * 4;
  auto w = LoopbackWorker::Start(o);
  ASSERT_NE(w, nullptr);
  ASSERT_EQ(w->GetLoad().kv_blocks_total(), 1440);
  v1::GenerateRequest r = Long();
  const int prompt = static_cast<int>(
      w->worker->tokenizer().Encode(r.text(), w->worker->tokenizer().add_bos_by_default()).size());
  r.set_max_tokens(256 - prompt);

  // Six requests: three run, the rest wait (a request that ends early by EOS lets the next
  // one in, so look for a moment with a queue behind a full batch).
  auto expect_admitted = [&](int running, int64_t blocks_each) {
    std::vector<std::unique_ptr<OpenStream>> streams;
    for (int i = 0; i < 6; ++i) streams.push_back(std::make_unique<OpenStream>(*w->stub, r));
    v1::GetLoadResponse seen;
    EXPECT_TRUE(WaitForLoad(*w, [&](const v1::GetLoadResponse& l) {
      seen = l;
      return l.running() == running && l.queued() >= 1;
    })) << seen.ShortDebugString();
    EXPECT_EQ(seen.kv_blocks_reserved(), running * blocks_each);
    for (int i = 0; i < 20; ++i) {
      EXPECT_LE(w->GetLoad().running(), running);
      absl::SleepFor(absl::Milliseconds(5));
    }
    for (auto& s : streams) s->CancelAndFinish();
    EXPECT_TRUE(w->WaitForEmptyPool());
  };
  expect_admitted(3, 480);
  // Version 2 shares 8 of 30 layers; new requests take it and a fourth one fits.
  ASSERT_TRUE(w->worker->strategies().Publish(2, EightOfThirty(w->worker->model())).ok());
  expect_admitted(4, 352);
}

TEST(AdmissionTest, InFlightRequestsKeepTheirStrategyVersionWhenANewOneIsPublished) {
  auto w = LoopbackWorker::Start(testing::SmolLm2WorkerOptions());
  ASSERT_NE(w, nullptr);
  v1::GenerateRequest r = Long();
  r.set_max_tokens(24);
  OpenStream old_version(*w->stub, r);
  ASSERT_TRUE(old_version.ReadFirstToken());
  EXPECT_EQ(old_version.start.strategy_version(), 1u);

  ASSERT_TRUE(w->worker->strategies().Publish(2, EightOfThirty(w->worker->model())).ok());
  const Streamed fresh = Collect(*w->stub, Short());
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.error_message();
  EXPECT_EQ(fresh.start.strategy_version(), 2u);
  EXPECT_EQ(fresh.start.strategy_id(), EightOfThirty(w->worker->model())->id());
  v1::GenerateRequest pinned = Short();
  pinned.set_strategy_version(1);
  EXPECT_EQ(Collect(*w->stub, pinned).start.strategy_version(), 1u);

  // The first request runs to its end on version 1.
  v1::GenerateResponse msg;
  bool ended = false;
  while (old_version.reader->Read(&msg)) ended |= msg.has_end();
  EXPECT_TRUE(old_version.reader->Finish().ok());
  EXPECT_TRUE(ended);
  ASSERT_TRUE(w->WaitForEmptyPool());
}

}  // namespace
}  // namespace kvshare
