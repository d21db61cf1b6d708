// Continuous batching over one Engine (docs/ARCHITECTURE.md, Serving).
//
// One scheduler thread owns the engine and loops:
//   1. stop the sequences whose client cancelled or whose deadline passed (their blocks are
//      freed before anything else runs);
//   2. admit queued requests, first come first served, while the KV pool can promise them
//      their worst case (below);
//   3. build one step under a token budget of max_step_rows: every decoding sequence's next
//      token first, then prefill chunks of the admitted prompts, oldest first, in the rows
//      left — so a long prompt is split over several steps and never stalls the decoders,
//      and a new request starts prefilling on the very next step;
//   4. run Engine::Step once and sample each sequence's next token with its own Sampler.
//
// Admission reserves the worst case. A request is admitted only when
//   reserved + BlocksFor(strategy, prompt + max_tokens) <= total blocks,
// where `reserved` sums that figure over the running sequences. (Counted per KV type when
// plans store layers in different types: the pool must be able to hand out, now, what every
// running sequence may still take plus the new worst case — KvCache::Fits, exact.) Every running
// sequence can therefore always grow to its end: a step never hits RESOURCE_EXHAUSTED, nothing is
// ever preempted, and no output depends on what else ran. The price is capacity held by requests
// that stop early (EOS, stop strings), returned when they finish. The figure is counted under
// each request's own strategy — a strategy that shares layers needs owning/L of the blocks, so
// more sequences fit in the same pool: the product's point.
//
// Batching does not change outputs: a sequence's rows go through the same per-row kernels
// whatever else is in the step, and each request samples with its own seeded Sampler and ends
// through the same CompletionTracker as Generate().
//
// Thread-safety: Submit, Load, StopAdmitting, WaitUntilIdle, CancelAll and Wake may be called
// from any thread. Sinks are called as GenerationSink documents.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "common/tokenizer/tokenizer.h"
#include "inference_service/generation.h"
#include "inference_service/serving_metrics.h"

namespace kvshare {

struct SchedulerOptions {
  // Rows (tokens over all sequences) of one step: at most the engine's max_step_rows.
  int step_tokens = 256;
  // Sequences in the running batch (each decoding one takes a row of every step); at most
  // half of step_tokens so prefill always has rows left.
  int max_batch = 64;
  // Requests accepted but not yet admitted; one more is RESOURCE_EXHAUSTED at once.
  int max_queue = 256;
};

// A consistent view of the scheduler's load (GetLoad, metrics, tests).
struct SchedulerLoad {
  int running = 0;
  int queued = 0;
  int queue_capacity = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_free = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_reserved = 0;
  bool draining = false;
};

class Scheduler {
 public:
  // Takes the engine and starts the scheduler thread. `tokenizer` must outlive the scheduler;
  // `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(std::unique_ptr<Engine> engine,
                                                           const Tokenizer& tokenizer,
                                                           const SchedulerOptions& options,
                                                           ServingMetrics* metrics);
  // Stops every request (UNAVAILABLE, finish kCancelled) and joins the thread.
  ~Scheduler();

  // Queues `request` (validated by the caller: prompt ids in range, max_tokens >= 1,
  // sampling) and calls sink->OnAccepted before returning OK; from then on the sink gets its
  // tokens and exactly one OnFinished. Otherwise no sink call, and:
  //   INVALID_ARGUMENT    prompt + max_tokens beyond the model's context, or beyond what the
  //                       whole pool holds under the request's strategy (numbers in the message);
  //   RESOURCE_EXHAUSTED  the queue is full;
  //   UNAVAILABLE         draining or stopped.
  absl::Status Submit(GenerationRequest request, GenerationSink* sink);

  SchedulerLoad Load() const;
  // KV blocks `tokens` positions take under `strategy`, all types together (immutable
  // geometry; any thread).
  int64_t BlocksFor(const SharingStrategy& strategy, int64_t tokens) const;
  // The most positions one sequence under `strategy` can hold in the empty pool, counting each
  // KV type's blocks as the pool stores them (a plan of small types holds more than
  // total_blocks() / owning layers blocks of the default type would). Any thread.
  int64_t CapacityTokens(const SharingStrategy& strategy) const;
  int64_t total_blocks() const { return total_blocks_; }
  int block_tokens() const { return block_tokens_; }
  // Bytes of one KV block (the pool's KvType; kernels/kv_type.h).
  int64_t block_bytes() const { return block_bytes_; }
  const ModelConfig& config() const { return config_; }
  std::string backend_name() const { return backend_name_; }

  // Drain: Submit answers UNAVAILABLE from now on; accepted requests run to their end.
  void StopAdmitting();
  // True once nothing is running or queued; false when `timeout` passes first.
  bool WaitUntilIdle(absl::Duration timeout);
  // Ends every accepted request at the next step with finish kCancelled and `why`, and stops
  // admitting (as StopAdmitting).
  void CancelAll(const absl::Status& why);
  // Makes the scheduler look at its sinks now (a client cancelled).
  void Wake();

 private:
  struct Sequence;

  Scheduler(std::unique_ptr<Engine> engine, const Tokenizer& tokenizer,
            const SchedulerOptions& options, ServingMetrics* metrics);
  void Loop();
  // Stops queued and running sequences that were cancelled or ran out of time.
  void Reap(absl::Time now);
  void Admit(absl::Time now);
  void RunStep();
  // Takes sampled token `id` for `s` from its logits row; finishes it when it ends.
  void OnSampled(Sequence& s, int32_t id, absl::Span<const float> logits, absl::Time now);
  void Finish(Sequence& s, FinishReason reason, const absl::Status& status, absl::Time now);
  void PublishLoad();
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsIdle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Immutable after construction.
  const Tokenizer& tokenizer_;
  const SchedulerOptions options_;
  ServingMetrics* const metrics_;
  ModelConfig config_;
  const KvCache* kv_shape_ = nullptr;  // only its immutable geometry is read off-thread
  int64_t total_blocks_ = 0;
  int block_tokens_ = 0;
  int64_t block_bytes_ = 0;
  int max_step_rows_ = 0;
  std::string backend_name_;

  // Scheduler thread only.
  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  int64_t reserved_blocks_ = 0;
  KvBlockCounts reserved_by_type_;
  std::vector<StepInput> step_inputs_;
  std::vector<float> logits_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Sequence>> queue_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status cancel_all_ ABSL_GUARDED_BY(mu_);  // non-OK: end everything with it
  SchedulerLoad load_ ABSL_GUARDED_BY(mu_);       // published by the scheduler thread

  std::thread thread_;
};

}  // namespace kvshare
