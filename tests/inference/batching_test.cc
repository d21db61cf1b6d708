// Continuous batching changes no output: 16 streams run together, each joining the batch while
// the others prefill or decode, produce exactly the tokens each produces alone — greedy and
// seeded sampling alike, each request with its own Sampler.
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "prometheus/client_metric.h"
#include "tests/inference/worker_fixture.h"

namespace kvshare {
namespace {

using testing::Collect;
using testing::LoopbackWorker;
using testing::Streamed;

// 16 requests: different prompt lengths (prefill chunks of different sizes), greedy and
// sampled, different seeds.
std::vector<v1::GenerateRequest> SixteenRequests(int max_tokens) {
  const char* kPrompts[] = {"Once upon a time",
                            "The little dog",
                            "Lily and Tom went to the park to play with their red ball. They",
                            "One day",
                            "A cat sat on the mat and looked at the big tree",
                            "There was a girl named Sue. She liked to sing songs every day and",
                            "The sun",
                            "Tim had a toy car"};
  std::vector<v1::GenerateRequest> out;
  for (int i = 0; i < 16; ++i) {
    v1::GenerateRequest r;
    r.set_text(kPrompts[i % 8]);
    r.set_max_tokens(max_tokens + i % 5);
    if (i % 2 == 1) {
      r.set_temperature(0.9f);
      r.set_top_p(0.95f);
      r.set_seed(1000 + i);
    }
    if (i % 4 == 2) r.set_top_k(40);
    out.push_back(r);
  }
  return out;
}

// Observations of `h` strictly above `bound`.
double CountAbove(prometheus::Histogram& h, double bound) {
  const prometheus::ClientMetric m = h.Collect();
  double at_or_below = 0;
  for (const auto& b : m.histogram.bucket) {
    if (b.upper_bound == bound) at_or_below = double(b.cumulative_count);
  }
  return double(m.histogram.sample_count) - at_or_below;
}

void ExpectConcurrentEqualsSolo(LoopbackWorker& w, int max_tokens) {
  const auto requests = SixteenRequests(max_tokens);
  std::vector<Streamed> solo;
  for (const auto& r : requests) {
    solo.push_back(Collect(*w.stub, r));
    ASSERT_TRUE(solo.back().status.ok()) << solo.back().status.error_message();
    ASSERT_FALSE(solo.back().ids.empty());
  }
  const double batched_steps_before = CountAbove(w.metrics->step_sequences, 1);

  std::vector<Streamed> together(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Collect(*w.stub, requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(absl::StrFormat("request %d (%s)", i, requests[i].ShortDebugString()));
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].ids, solo[i].ids);
    EXPECT_EQ(together[i].text, solo[i].text);
    EXPECT_EQ(together[i].end.finish_reason(), solo[i].end.finish_reason());
  }
  // The streams really shared steps.
  EXPECT_GT(CountAbove(w.metrics->step_sequences, 1) - batched_steps_before, 0);
  EXPECT_TRUE(w.WaitForEmptyPool());
}

// SmolLM2's quantized matmuls take the same per-row integer path at every batch size, so the
// check is exact.
TEST(BatchingTest, SixteenConcurrentStreamsEachEqualTheirSoloRun) {
  WorkerOptions o = testing::SmolLm2WorkerOptions();
  o.scheduler.step_tokens = 32;  // prompts split into chunks that share steps with decoders
  o.scheduler.max_batch = 16;
  auto w = LoopbackWorker::Start(o);
  ASSERT_NE(w, nullptr);
  ExpectConcurrentEqualsSolo(*w, 12);
}

}  // namespace
}  // namespace kvshare
