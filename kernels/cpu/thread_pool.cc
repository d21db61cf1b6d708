#include "kernels/cpu/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVSHARE_CPU_RELAX() _mm_pause()
#else
#define KVSHARE_CPU_RELAX() ((void)0)
#endif

namespace kvshare::cpu {
namespace {

// How long a worker polls for the next job before it sleeps: tens of microseconds of pause
// instructions, longer than the gap between two ops of a decode step.
constexpr int kSpinIterations = 1 << 14;
// How long the caller polls for the last tasks before it yields its core (on an oversubscribed
// machine the thread running them may be waiting for exactly that core).
constexpr int kCallerSpins = 1 << 12;

constexpr int kTaskBits = 20;
constexpr uint64_t kTaskMask = (uint64_t{1} << kTaskBits) - 1;
constexpr int64_t kMaxTasksPerJob = static_cast<int64_t>(kTaskMask);
constexpr uint64_t kGenMask = (uint64_t{1} << (64 - 2 * kTaskBits)) - 1;

uint64_t GenOf(uint64_t w) { return w >> (2 * kTaskBits); }
uint64_t EndOf(uint64_t w) { return (w >> kTaskBits) & kTaskMask; }
uint64_t NextOf(uint64_t w) { return w & kTaskMask; }
uint64_t Pack(uint64_t gen, uint64_t end, uint64_t next) {
  return (gen << (2 * kTaskBits)) | (end << kTaskBits) | next;
}

}  // namespace

ThreadPool::ThreadPool(int threads)
    : threads_(threads < 1 ? 1 : threads), ranges_(new Range[threads < 1 ? 1 : threads]) {
  workers_.reserve(threads_ - 1);
  for (int t = 1; t < threads_; ++t) workers_.emplace_back([this, t] { WorkerLoop(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.store((generation_.load() + 1) & kGenMask, std::memory_order_seq_cst);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::RunTasks(uint64_t gen, int thread) {
  int64_t done = 0;
  // Own range from the front, then the others' from the back.
  for (int i = 0; i < threads_; ++i) {
    const int victim = (thread + i) % threads_;
    std::atomic<uint64_t>& word = ranges_[victim].word;
    uint64_t w = word.load(std::memory_order_acquire);
    for (;;) {
      if (GenOf(w) != gen || NextOf(w) >= EndOf(w)) break;
      const bool own = i == 0;
      const uint64_t claimed = own ? w + 1 : w - (uint64_t{1} << kTaskBits);
      if (!word.compare_exchange_weak(w, claimed, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        continue;  // w was reloaded
      }
      // The claim succeeded, so job `gen` is not over and fn_ / base_ are its own.
      const uint64_t task = own ? NextOf(w) : EndOf(w) - 1;
      (*fn_)(base_ + static_cast<int64_t>(task), thread);
      ++done;
      w = word.load(std::memory_order_acquire);
    }
  }
  if (done > 0) done_.fetch_add(done, std::memory_order_acq_rel);
}

void ThreadPool::RunJob(int64_t base, int64_t n_tasks, const Fn& fn) {
  fn_ = &fn;
  base_ = base;
  done_.store(0, std::memory_order_relaxed);
  const uint64_t gen = (generation_.load(std::memory_order_relaxed) + 1) & kGenMask;
  for (int t = 0; t < threads_; ++t) {
    const uint64_t begin = static_cast<uint64_t>(n_tasks * t / threads_);
    const uint64_t end = static_cast<uint64_t>(n_tasks * (t + 1) / threads_);
    ranges_[t].word.store(Pack(gen, end, begin), std::memory_order_relaxed);
  }
  generation_.store(gen, std::memory_order_seq_cst);  // publishes the ranges and fn_
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(mu_);  // pairs with the sleeper's check under mu_
    wake_.notify_all();
  }
  RunTasks(gen, 0);
  for (int spins = 0; done_.load(std::memory_order_acquire) != n_tasks; ++spins) {
    if (spins < kCallerSpins) {
      KVSHARE_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n_tasks,
                             absl::FunctionRef<void(int64_t task, int thread)> fn) {
  if (n_tasks <= 0) return;
  if (threads_ == 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  for (int64_t base = 0; base < n_tasks; base += kMaxTasksPerJob) {
    RunJob(base, std::min(kMaxTasksPerJob, n_tasks - base), fn);
  }
}

void ThreadPool::WorkerLoop(int thread) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int i = 0; gen == seen && i < kSpinIterations; ++i) {
      KVSHARE_CPU_RELAX();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      wake_.wait(lock, [&] {
        gen = generation_.load(std::memory_order_seq_cst);
        return gen != seen;
      });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    seen = gen;
    if (stop_.load()) return;
    RunTasks(gen, thread);
  }
}

}  // namespace kvshare::cpu
