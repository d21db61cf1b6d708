#include "search_service/server/search_job_service.h"

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/util/exception_status.h"
#include "proto/wire/search_job_wire.h"
#include "service_runtime/grpc_status.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

using runtime::Answer;
using runtime::ToGrpcStatus;

// One WatchSearchJob call. Owned by itself (self_) from creation to OnDone; the runner's
// listener holds only a weak reference, so a change racing with the end of the call is
// harmless. Writes and Finish happen outside mu_ (gRPC may run reactions inline), and the
// state machine guarantees one write at a time and Finish exactly once, never during a write.
class WatchStream : public grpc::ServerWriteReactor<v1::SearchJobUpdate>,
                    public std::enable_shared_from_this<WatchStream> {
 public:
  static WatchStream* Start(SearchJobRunner* runner, const std::string& job_id) {
    auto stream = std::shared_ptr<WatchStream>(new WatchStream(runner, job_id));
    stream->self_ = stream;
    std::weak_ptr<WatchStream> weak = stream;
    auto token = runner->Watch(job_id, [weak] {
      if (auto s = weak.lock()) s->Pump();
    });
    if (!token.ok()) {
      {
        absl::MutexLock lock(&stream->mu_);
        stream->finish_called_ = true;
      }
      stream->Finish(ToGrpcStatus(token.status()));
      return stream.get();
    }
    {
      absl::MutexLock lock(&stream->mu_);
      stream->token_ = *token;
    }
    stream->Pump();  // the current state, at once
    return stream.get();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) broken_ = true;
    }
    Pump();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
    }
    Pump();
  }

  void OnDone() override {
    uint64_t token;
    {
      absl::MutexLock lock(&mu_);
      token = token_;
    }
    if (token != 0) runner_->Unwatch(job_id_, token);
    self_.reset();  // may delete this
  }

 private:
  WatchStream(SearchJobRunner* runner, std::string job_id)
      : runner_(runner), job_id_(std::move(job_id)) {}

  // Starts the next write when the job moved on, or Finish after the terminal snapshot (or
  // when the client is gone).
  void Pump() {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finish_called_) return;
      if (broken_ || cancelled_) {
        finish = grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away");
      } else if (terminal_sent_) {
        finish = grpc::Status::OK;
      } else {
        auto snapshot = runner_->Snapshot(job_id_);
        if (!snapshot.ok()) {
          finish = ToGrpcStatus(snapshot.status());
        } else {
          if (snapshot->sequence <= last_sequence_) return;
          last_sequence_ = snapshot->sequence;
          terminal_sent_ = IsTerminalJobState(snapshot->job.state());
          message_.set_sequence(snapshot->sequence);
          *message_.mutable_job() = std::move(snapshot->job);
          writing_ = true;
        }
      }
      if (finish.has_value()) finish_called_ = true;
    }
    if (finish.has_value()) {
      Finish(*finish);
    } else {
      StartWrite(&message_);
    }
  }

  SearchJobRunner* const runner_;
  const std::string job_id_;
  std::shared_ptr<WatchStream> self_;

  absl::Mutex mu_;
  uint64_t token_ ABSL_GUARDED_BY(mu_) = 0;
  v1::SearchJobUpdate message_;  // owned by the write in flight
  uint64_t last_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool terminal_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerUnaryReactor* SearchJobService::CreateSearchJob(
    grpc::CallbackServerContext* context, const v1::CreateSearchJobRequest* request,
    v1::SearchJob* response) {
  // Runs on the callback thread: a first job for a model loads it here (about a second for
  // SmolLM2-135M); later jobs only tokenise their calibration text.
  auto job = CatchExceptions("CreateSearchJob", [&] { return runner_->Create(*request); });
  if (!job.ok()) {
    spdlog::info("event=create_refused code={} message={}",
                 absl::StatusCodeToString(job.status().code()),
                 runtime::LogValue(std::string(job.status().message())));
  }
  return Answer(context, std::move(job), response);
}

grpc::ServerUnaryReactor* SearchJobService::GetSearchJob(grpc::CallbackServerContext* context,
                                                         const v1::GetSearchJobRequest* request,
                                                         v1::SearchJob* response) {
  return Answer(context,
                CatchExceptions("GetSearchJob", [&] { return runner_->Get(request->job_id()); }),
                response);
}

grpc::ServerWriteReactor<v1::SearchJobUpdate>* SearchJobService::WatchSearchJob(
    grpc::CallbackServerContext*, const v1::WatchSearchJobRequest* request) {
  return WatchStream::Start(runner_, request->job_id());
}

grpc::ServerUnaryReactor* SearchJobService::CancelSearchJob(
    grpc::CallbackServerContext* context, const v1::CancelSearchJobRequest* request,
    v1::SearchJob* response) {
  return Answer(
      context,
      CatchExceptions("CancelSearchJob", [&] { return runner_->Cancel(request->job_id()); }),
      response);
}

grpc::ServerUnaryReactor* SearchJobService::ListSearchJobs(grpc::CallbackServerContext* context,
                                                           const v1::ListSearchJobsRequest* request,
                                                           v1::ListSearchJobsResponse* response) {
  if (request->limit() < 0) {
    return Answer<v1::ListSearchJobsResponse>(
        context, absl::InvalidArgumentError("limit must be >= 0"), response);
  }
  v1::ListSearchJobsResponse out;
  for (v1::SearchJob& job : runner_->List(*request)) *out.add_jobs() = std::move(job);
  return Answer<v1::ListSearchJobsResponse>(context, std::move(out), response);
}

}  // namespace kvshare
