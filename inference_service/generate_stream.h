// One Generate call on the gRPC callback API: a ServerWriteReactor that is also the
// scheduler's GenerationSink.
//
// The scheduler thread produces events (start, tokens, end) faster or slower than the client
// reads; they queue here and go out one write at a time. While a write is in flight, new
// tokens are merged into the queued chunk, so a slow reader gets fewer, larger chunks and the
// scheduler never waits on the network.
//
// Lifetime: created by the service for each call, it deletes itself in OnDone, which gRPC calls
// only after Finish — and Finish is called exactly once, either at once (the request was
// refused) or after the scheduler's OnFinished and the last queued write. So the scheduler may
// use the sink until OnFinished returns.
#pragma once

#include <atomic>
#include <deque>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "inference_service/generation.h"
#include "inference_service/inference_worker.h"
#include "kvshare/v1/inference.pb.h"

namespace kvshare {

// Counts the Generate streams not yet done, so a drain can wait for the last write of every
// stream, not only for its last token. Thread-safe.
class StreamCounter {
 public:
  void Add();
  void Done();
  // True once no stream is left; false when `timeout` passes first.
  bool WaitForZero(absl::Duration timeout);

 private:
  bool Zero() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_ == 0; }
  absl::Mutex mu_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
};

class GenerateStream : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                       public GenerationSink {
 public:
  // Validates `request`, submits it to the worker's scheduler, or finishes the call with the
  // refusal. `request` need only live through the constructor; `counter` must outlive the
  // stream.
  GenerateStream(InferenceWorker& worker, StreamCounter& counter,
                 grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
                 std::string request_id);

  // grpc::ServerWriteReactor
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // GenerationSink
  void OnAccepted(const GenerationRequest& request) override;
  void OnToken(const SampledToken& token) override;
  void OnFinished(const GenerationOutcome& outcome) override;
  bool IsCancelled() const override { return cancelled_.load(std::memory_order_relaxed); }

 private:
  void Enqueue(v1::GenerateResponse message);
  // Starts the next write, or Finish once the queue is empty and the end is known.
  void Pump();

  InferenceWorker& worker_;
  StreamCounter& counter_;
  std::atomic<bool> cancelled_{false};

  absl::Mutex mu_;
  std::deque<v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse in_flight_;  // owned by the write in progress
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed: the client is gone
  std::optional<grpc::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
};

// absl::Status -> grpc::Status (the codes are the same numbers).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace kvshare
