#include "inference_service/generate_stream.h"

#include <chrono>
#include <utility>

#include "absl/strings/ascii.h"
#include "inference_service/request_builder.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

v1::FinishReason ToWire(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

void StreamCounter::Add() {
  absl::MutexLock lock(&mu_);
  ++active_;
}

void StreamCounter::Done() {
  absl::MutexLock lock(&mu_);
  --active_;
}

bool StreamCounter::WaitForZero(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(this, &StreamCounter::Zero), timeout);
}

GenerateStream::GenerateStream(InferenceWorker& worker, StreamCounter& counter,
                               grpc::CallbackServerContext* context,
                               const v1::GenerateRequest& wire, std::string request_id)
    : worker_(worker), counter_(counter) {
  counter_.Add();
  const Model& model = worker.model();
  auto request = BuildGenerationRequest(wire, std::move(request_id), worker.tokenizer(),
                                        model.config(), worker.strategies(), worker.limits());
  absl::Status status = request.status();
  if (status.ok()) {
    // gRPC's "no deadline" is the far future; absl::FromChrono saturates.
    const auto deadline = context->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      request->deadline = absl::FromChrono(deadline);
    }
    const std::string id = request->id;
    status = worker.scheduler().Submit(std::move(*request), this);
    if (status.ok()) {
      spdlog::debug("event=request_accepted request_id={}", runtime::LogValue(id));
      Pump();  // the start message OnAccepted queued
      return;
    }
  }
  if (ServingMetrics* metrics = worker.metrics()) {
    metrics->requests(absl::AsciiStrToLower(absl::StatusCodeToString(status.code()))).Increment();
  }
  spdlog::info("event=request_refused code={} message={}", absl::StatusCodeToString(status.code()),
               runtime::LogValue(std::string(status.message())));
  {
    absl::MutexLock lock(&mu_);
    finish_called_ = true;
  }
  Finish(ToGrpcStatus(status));
}

void GenerateStream::OnAccepted(const GenerationRequest& request) {
  v1::GenerateResponse message;
  v1::GenerateStart* start = message.mutable_start();
  start->set_request_id(request.id);
  start->set_model(worker_.model().config().name);
  start->set_model_fingerprint(worker_.model().fingerprint());
  start->set_strategy_id(request.strategy.strategy->id());
  start->set_strategy_version(request.strategy.version);
  start->set_prompt_tokens(static_cast<int>(request.prompt.size()));
  start->mutable_prompt_token_ids()->Add(request.prompt.begin(), request.prompt.end());
  // Queued only: the constructor starts the write once Submit returns (OnAccepted runs under
  // the scheduler's lock, where no gRPC call belongs).
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(message));
}

void GenerateStream::OnToken(const SampledToken& token) {
  v1::GenerateResponse message;
  v1::TokenChunk* chunk = message.mutable_chunk();
  chunk->set_text(token.piece);
  chunk->add_token_ids(token.id);
  if (token.has_logprobs) {
    v1::TokenLogProbs* lp = chunk->add_logprobs();
    lp->set_id(token.id);
    lp->set_logprob(token.logprob);
    for (const TokenAlternativeInfo& alt : token.top) {
      v1::TokenAlternative* a = lp->add_top();
      a->set_id(alt.id);
      a->set_text(alt.text);
      a->set_logprob(alt.logprob);
    }
  }
  Enqueue(std::move(message));
}

void GenerateStream::OnFinished(const GenerationOutcome& outcome) {
  const absl::StatusCode code = outcome.status.code();
  // The client is gone after a cancellation or its deadline: only the status matters. A
  // stream cut by the worker (drain grace, failure) still says how far it got.
  if (code != absl::StatusCode::kCancelled && code != absl::StatusCode::kDeadlineExceeded) {
    v1::GenerateResponse message;
    v1::GenerateEnd* end = message.mutable_end();
    end->set_finish_reason(ToWire(outcome.finish));
    end->mutable_usage()->set_prompt_tokens(outcome.prompt_tokens);
    end->mutable_usage()->set_completion_tokens(outcome.completion_tokens);
    end->mutable_usage()->set_total_tokens(outcome.prompt_tokens + outcome.completion_tokens);
    const GenerationTimings& t = outcome.timings;
    v1::Timings* timings = end->mutable_timings();
    timings->set_queue_seconds(t.queue_seconds);
    timings->set_prefill_seconds(t.prefill_seconds);
    timings->set_decode_seconds(t.decode_seconds);
    timings->set_time_to_first_token_seconds(t.time_to_first_token_seconds);
    Enqueue(std::move(message));
  }
  {
    absl::MutexLock lock(&mu_);
    finish_ = ToGrpcStatus(outcome.status);
  }
  Pump();  // after this the scheduler never touches us again
}

void GenerateStream::Enqueue(v1::GenerateResponse message) {
  {
    absl::MutexLock lock(&mu_);
    if (broken_) return;
    if (message.has_chunk() && !queue_.empty() && queue_.back().has_chunk()) {
      // The client is behind: grow the waiting chunk instead of queueing another.
      v1::TokenChunk* waiting = queue_.back().mutable_chunk();
      v1::TokenChunk* next = message.mutable_chunk();
      waiting->mutable_text()->append(next->text());
      waiting->mutable_token_ids()->MergeFrom(next->token_ids());
      waiting->mutable_logprobs()->MergeFrom(next->logprobs());
      return;
    }
    queue_.push_back(std::move(message));
  }
  Pump();
}

void GenerateStream::Pump() {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    if (writing_ || finish_called_) return;
    if (!queue_.empty() && !broken_) {
      in_flight_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
    } else if (finish_.has_value()) {
      finish_called_ = true;
      finish = finish_;
    } else {
      return;
    }
  }
  // Outside the lock: gRPC may run reactions inline, and after Finish `this` may be gone.
  if (finish.has_value()) {
    Finish(*finish);
  } else {
    StartWrite(&in_flight_);
  }
}

void GenerateStream::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      broken_ = true;
      queue_.clear();
    }
  }
  Pump();
}

void GenerateStream::OnCancel() {
  cancelled_.store(true, std::memory_order_relaxed);
  worker_.scheduler().Wake();
}

void GenerateStream::OnDone() {
  StreamCounter& counter = counter_;
  delete this;
  counter.Done();
}

}  // namespace kvshare
