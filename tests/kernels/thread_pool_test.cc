#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvshare::cpu {
namespace {

TEST(ThreadPoolTest, RunsEveryTaskExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 2, 7, 100, 5000}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, [&](int64_t task, int thread) {
        ASSERT_GE(thread, 0);
        ASSERT_LT(thread, threads);
        hits[task].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "task " << i;
    }
  }
}

TEST(ThreadPoolTest, ManyShortJobsBackToBack) {
  ThreadPool pool(4);
  std::atomic<int64_t> sum{0};
  for (int job = 0; job < 20000; ++job) {
    pool.ParallelFor(3, [&](int64_t task, int) { sum.fetch_add(task + 1); });
  }
  EXPECT_EQ(sum.load(), 20000 * 6);
}

TEST(ThreadPoolTest, WakesWorkersThatWentToSleep) {
  ThreadPool pool(3);
  for (int round = 0; round < 3; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // workers fall asleep
    std::mutex mu;
    std::set<int> threads_seen;
    std::atomic<int> done{0};
    pool.ParallelFor(64, [&](int64_t, int thread) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      std::lock_guard<std::mutex> lock(mu);
      threads_seen.insert(thread);
      done.fetch_add(1);
    });
    EXPECT_EQ(done.load(), 64);
    // With 64 tasks of 0.5 ms, the sleeping workers must have joined in.
    EXPECT_GT(threads_seen.size(), 1u);
  }
}

TEST(ThreadPoolTest, MoreTasksThanOneJobHolds) {
  ThreadPool pool(2);
  const int64_t n = (int64_t{1} << 20) + 17;
  std::atomic<int64_t> count{0}, sum{0};
  pool.ParallelFor(n, [&](int64_t task, int) {
    count.fetch_add(1, std::memory_order_relaxed);
    sum.fetch_add(task, std::memory_order_relaxed);
  });
  EXPECT_EQ(count.load(), n);
  EXPECT_EQ(sum.load(), n * (n - 1) / 2);
}

}  // namespace
}  // namespace kvshare::cpu
