// A persistent pool of worker threads for the CPU backend's ops.
//
// ParallelFor(n_tasks, fn) runs fn(task, thread) for every task in [0, n_tasks) on the pool's
// threads (the caller is thread 0 and works too) and returns when all tasks are done. A task
// must compute the same thing whichever thread runs it: kernels split work by output rows or
// heads, never a reduction by thread count, which keeps results independent of the number of
// threads and of which thread ran what.
//
// Scheduling: thread t owns the contiguous range of tasks [t n / T, (t + 1) n / T) and claims
// them in order from a counter on its own cache line (kernels give consecutive tasks adjacent
// memory, so a thread streams one region, as a static split would); a thread whose range is
// empty steals from the back of the others'. Measured on the SmolLM2 decode sweep (2 threads),
// one shared counter cost ~20% against a static split; this matches the static split and still
// finishes the work when a thread is descheduled. A job is over when its tasks are done, not
// when every worker has looked at it.
//
// Waiting workers spin briefly (a decode step issues hundreds of short ops back to back), then
// sleep on a condition variable, so an idle pool costs no CPU. Not thread-safe: one caller at a
// time (the Backend contract).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace kvshare::cpu {

class ThreadPool {
 public:
  // threads >= 1 (the caller counts as one).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }

  void ParallelFor(int64_t n_tasks, absl::FunctionRef<void(int64_t task, int thread)> fn);

 private:
  using Fn = absl::FunctionRef<void(int64_t, int)>;
  // A thread's range of the current job: [generation:24][end:20][next:20]. Claims are
  // compare-and-swaps that also check the generation, so a worker that wakes late cannot take a
  // task of a job that is over or of a newer one.
  struct alignas(64) Range {
    std::atomic<uint64_t> word{0};
  };

  void RunJob(int64_t base, int64_t n_tasks, const Fn& fn);
  void WorkerLoop(int thread);
  // Runs tasks of job `gen` (own range first, then stolen ones) until none is left.
  void RunTasks(uint64_t gen, int thread);

  const int threads_;
  std::vector<std::thread> workers_;
  std::unique_ptr<Range[]> ranges_;

  // The current job, written by the caller before it publishes generation_.
  const Fn* fn_ = nullptr;
  int64_t base_ = 0;

  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable wake_;
};

}  // namespace kvshare::cpu
