#include "search_service/server/rollout_service.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "service_runtime/grpc_status.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

using runtime::Answer;

// Writes snapshot() now and after every change the controller reports, at most one write in
// flight (changes during a write coalesce into the next snapshot). `done(snapshot)` true ends
// the stream OK after writing it (a rollout that completed or was aborted).
template <typename T>
class SnapshotWatch final : public grpc::ServerWriteReactor<T> {
 public:
  SnapshotWatch(RolloutController* controller, std::function<absl::StatusOr<T>()> snapshot,
                std::function<bool(const T&)> done)
      : controller_(controller), snapshot_(std::move(snapshot)), done_(std::move(done)) {
    auto first = snapshot_();
    if (!first.ok()) {
      finished_ = true;
      this->Finish(runtime::ToGrpcStatus(first.status()));
      return;
    }
    handle_ = controller_->Watch([this] { Changed(); });
    watching_ = true;
    Write(std::move(*first));
  }

  void OnWriteDone(bool ok) override {
    bool finish = false, again = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok || finished_) return;
      if (last_was_final_) {
        finished_ = finish = true;
      } else {
        again = dirty_;
        dirty_ = false;
      }
    }
    if (finish) {
      StopWatching();
      this->Finish(grpc::Status::OK);
      return;
    }
    if (again) WriteLatest();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    StopWatching();
    this->Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    StopWatching();
    delete this;
  }

 private:
  void Changed() {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || last_was_final_) return;
      if (writing_) {
        dirty_ = true;
        return;
      }
    }
    WriteLatest();
  }

  void WriteLatest() {
    auto next = snapshot_();
    if (!next.ok()) return;
    Write(std::move(*next));
  }

  void Write(T message) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || writing_) {
        dirty_ = true;
        return;
      }
      writing_ = true;
      current_ = std::move(message);
      last_was_final_ = done_ && done_(current_);
    }
    this->StartWrite(&current_);
  }

  // Unwatch waits for a notification in progress, so `this` is not used after it returns.
  // Never called from inside a notification (OnCancel/OnDone/OnWriteDone run on gRPC threads).
  void StopWatching() {
    bool was;
    {
      absl::MutexLock lock(&stop_mu_);
      was = watching_;
      watching_ = false;
    }
    if (was) controller_->Unwatch(handle_);
  }

  RolloutController* const controller_;
  const std::function<absl::StatusOr<T>()> snapshot_;
  const std::function<bool(const T&)> done_;
  int handle_ = -1;
  absl::Mutex stop_mu_;
  bool watching_ ABSL_GUARDED_BY(stop_mu_) = false;
  absl::Mutex mu_;
  T current_;  // the message being written; changed only while no write is in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool last_was_final_ ABSL_GUARDED_BY(mu_) = false;
};

bool Terminal(const v1::Rollout& r) {
  return r.state() == v1::ROLLOUT_COMPLETED || r.state() == v1::ROLLOUT_ABORTED;
}

absl::Status RequireId(const v1::RolloutRef& ref) {
  if (ref.rollout_id().empty()) return absl::InvalidArgumentError("rollout_id is empty");
  return absl::OkStatus();
}

}  // namespace

grpc::ServerUnaryReactor* RolloutService::CreateRollout(grpc::CallbackServerContext* context,
                                                        const v1::CreateRolloutRequest* request,
                                                        v1::Rollout* response) {
  auto fingerprint = registry_->ResolveModel(request->model(), "model");
  if (!fingerprint.ok()) return Answer<v1::Rollout>(context, fingerprint.status(), response);
  std::vector<uint32_t> steps(request->steps().begin(), request->steps().end());
  // A name the caller used is kept for listings; a fingerprint leaves the registry's name.
  std::string name = request->model() == *fingerprint ? "" : request->model();
  const bool allow = request->allow_quality_regression();
  return Answer(context,
                controller_->CreateRollout(*fingerprint, name, request->target_version(),
                                           std::move(steps), request->label_selector(),
                                           [this, name, allow](const StrategyRecord& record) {
                                             return Gate(record, name, allow);
                                           }),
                response);
}

absl::StatusOr<QualityGateRecord> RolloutService::Gate(const StrategyRecord& record,
                                                       const std::string& model_name, bool allow) {
  const std::string name = model_name.empty() ? record.model_name : model_name;
  const double budget =
      catalog_ != nullptr ? catalog_->QualityBudgetPct(name) : kDefaultQualityBudgetPct;
  absl::Status s = CheckQualityGate(record, name, budget, allow);
  if (!s.ok()) return s;
  QualityGateRecord g = GateRecordFor(record, budget, allow);
  if (probes_ != nullptr) {
    auto probe = probes_->For(*record.strategy, name);
    if (probe.ok()) {
      g.probe = *probe;
    } else {
      // The rollout goes on; workers' probes of it are not checked.
      spdlog::warn("event=quality_probe_unavailable version={} error=\"{}\"", record.version,
                   std::string(probe.status().message()));
    }
  }
  return g;
}

grpc::ServerUnaryReactor* RolloutService::GetRollout(grpc::CallbackServerContext* context,
                                                     const v1::RolloutRef* request,
                                                     v1::Rollout* response) {
  absl::Status s = RequireId(*request);
  if (!s.ok()) return Answer<v1::Rollout>(context, s, response);
  return Answer(context, controller_->GetRollout(request->rollout_id()), response);
}

grpc::ServerUnaryReactor* RolloutService::ListRollouts(grpc::CallbackServerContext* context,
                                                       const v1::ListRolloutsRequest*,
                                                       v1::ListRolloutsResponse* response) {
  v1::ListRolloutsResponse out;
  for (v1::Rollout& r : controller_->ListRollouts()) *out.add_rollouts() = std::move(r);
  return Answer<v1::ListRolloutsResponse>(context, std::move(out), response);
}

grpc::ServerWriteReactor<v1::Rollout>* RolloutService::WatchRollout(grpc::CallbackServerContext*,
                                                                    const v1::RolloutRef* request) {
  const std::string id = request->rollout_id();
  RolloutController* controller = controller_;
  return new SnapshotWatch<v1::Rollout>(
      controller,
      [controller, id]() -> absl::StatusOr<v1::Rollout> {
        if (id.empty()) return absl::InvalidArgumentError("rollout_id is empty");
        return controller->GetRollout(id);
      },
      Terminal);
}

#define KVSHARE_ROLLOUT_OP(Rpc, Method)                                               \
  grpc::ServerUnaryReactor* RolloutService::Rpc(grpc::CallbackServerContext* context, \
                                                const v1::RolloutRef* request,        \
                                                v1::Rollout* response) {              \
    absl::Status s = RequireId(*request);                                             \
    if (!s.ok()) return Answer<v1::Rollout>(context, s, response);                    \
    return Answer(context, controller_->Method(request->rollout_id()), response);     \
  }
KVSHARE_ROLLOUT_OP(PauseRollout, Pause)
KVSHARE_ROLLOUT_OP(ResumeRollout, Resume)
KVSHARE_ROLLOUT_OP(PromoteRollout, Promote)
KVSHARE_ROLLOUT_OP(AbortRollout, Abort)
#undef KVSHARE_ROLLOUT_OP

absl::StatusOr<v1::Pin> RolloutService::ResolvePin(const v1::Pin& pin) {
  v1::Pin out = pin;
  auto fingerprint = registry_->ResolveModel(pin.model(), "model");
  if (!fingerprint.ok()) return fingerprint.status();
  out.set_model(*fingerprint);
  return out;
}

grpc::ServerUnaryReactor* RolloutService::SetPin(grpc::CallbackServerContext* context,
                                                 const v1::Pin* request, v1::Pin* response) {
  auto pin = ResolvePin(*request);
  if (!pin.ok()) return Answer<v1::Pin>(context, pin.status(), response);
  return Answer(context, controller_->SetPin(*pin), response);
}

grpc::ServerUnaryReactor* RolloutService::ClearPin(grpc::CallbackServerContext* context,
                                                   const v1::Pin* request,
                                                   v1::ListPinsResponse* response) {
  auto left = controller_->ClearPin(*request);
  if (!left.ok()) return Answer<v1::ListPinsResponse>(context, left.status(), response);
  v1::ListPinsResponse out;
  for (v1::Pin& p : *left) *out.add_pins() = std::move(p);
  return Answer<v1::ListPinsResponse>(context, std::move(out), response);
}

grpc::ServerUnaryReactor* RolloutService::ListPins(grpc::CallbackServerContext* context,
                                                   const v1::ListPinsRequest*,
                                                   v1::ListPinsResponse* response) {
  v1::ListPinsResponse out;
  for (v1::Pin& p : controller_->ListPins()) *out.add_pins() = std::move(p);
  return Answer<v1::ListPinsResponse>(context, std::move(out), response);
}

grpc::ServerUnaryReactor* RolloutService::GetFleetStatus(grpc::CallbackServerContext* context,
                                                         const v1::GetFleetStatusRequest*,
                                                         v1::FleetStatus* response) {
  return Answer<v1::FleetStatus>(context, controller_->Fleet(), response);
}

grpc::ServerWriteReactor<v1::FleetStatus>* RolloutService::WatchFleet(
    grpc::CallbackServerContext*, const v1::GetFleetStatusRequest*) {
  RolloutController* controller = controller_;
  return new SnapshotWatch<v1::FleetStatus>(
      controller, [controller]() -> absl::StatusOr<v1::FleetStatus> { return controller->Fleet(); },
      nullptr);
}

}  // namespace kvshare
