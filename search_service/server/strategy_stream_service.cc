#include "search_service/server/strategy_stream_service.h"

#include <deque>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

// One worker's stream. Reads are always outstanding; writes go out one at a time from a
// queue (the callback API allows one write in flight). The controller holds the reactor as a
// WorkerChannel from the hello until Disconnected(), which OnDone calls before deleting it.
class WorkerStream final
    : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::StrategyAssignment>,
      public WorkerChannel {
 public:
  WorkerStream(RolloutController* controller, grpc::CallbackServerContext* context)
      : controller_(controller), peer_(context->peer()) {
    StartRead(&in_);
  }

  void Send(const v1::StrategyAssignment& assignment) override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      out_.push_back(assignment);
      if (writing_) return;
      writing_ = true;
    }
    // The front stays put until OnWriteDone pops it; no lock across StartWrite.
    StartWrite(&FrontLocked());
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the worker closed its side or the stream broke
      End(grpc::Status::OK);
      return;
    }
    switch (in_.kind_case()) {
      case v1::WorkerMessage::kHello: {
        const v1::WorkerHello& h = in_.hello();
        std::string error;
        if (hello_seen_)
          error = "hello: sent twice on one stream";
        else if (h.worker_id().empty())
          error = "hello.worker_id is empty";
        else if (h.model_fingerprint().empty())
          error = "hello.model_fingerprint is empty";
        if (!error.empty()) {
          End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error));
          return;
        }
        hello_seen_ = true;
        controller_->Hello(this, h);
        break;
      }
      case v1::WorkerMessage::kAck:
      case v1::WorkerMessage::kLoad:
        if (!hello_seen_) {
          End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           "the first message of StreamStrategy must be a hello"));
          return;
        }
        if (in_.has_ack())
          controller_->Ack(this, in_.ack());
        else
          controller_->Load(this, in_.load());
        break;
      default:
        End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "WorkerMessage.kind is not set"));
        return;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    bool more = false;
    {
      absl::MutexLock lock(&mu_);
      out_.pop_front();
      more = ok && !finished_ && !out_.empty();
      writing_ = more;
    }
    if (more) StartWrite(&FrontLocked());
  }

  void OnCancel() override { End(grpc::Status::CANCELLED); }

  void OnDone() override {
    controller_->Disconnected(this);
    delete this;
  }

 private:
  // Only the writer (the one holding writing_) touches the front.
  const v1::StrategyAssignment& FrontLocked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return out_.front();
  }

  void End(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    // Off the controller before the stream ends, so nothing more is queued.
    controller_->Disconnected(this);
    if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
      spdlog::warn("event=worker_stream_refused peer={} error={}", peer_,
                   runtime::LogValue(status.error_message()));
    }
    Finish(status);
  }

  RolloutController* const controller_;
  const std::string peer_;
  v1::WorkerMessage in_;  // only the read path touches it
  bool hello_seen_ = false;
  absl::Mutex mu_;
  std::deque<v1::StrategyAssignment> out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerBidiReactor<v1::WorkerMessage, v1::StrategyAssignment>*
StrategyStreamService::StreamStrategy(grpc::CallbackServerContext* context) {
  return new WorkerStream(controller_, context);
}

}  // namespace kvshare
