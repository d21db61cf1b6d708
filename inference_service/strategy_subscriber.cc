#include "inference_service/strategy_subscriber.h"

#include <algorithm>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "proto/wire/projections_transfer.h"
#include "proto/wire/strategy_wire.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

const char* ReasonName(v1::NackReason r) {
  switch (r) {
    case v1::NACK_REASON_FINGERPRINT_MISMATCH:
      return "fingerprint_mismatch";
    case v1::NACK_REASON_INVALID_STRATEGY:
      return "invalid_strategy";
    case v1::NACK_REASON_LOAD_FAILURE:
      return "load_failure";
    default:
      return "unspecified";
  }
}

}  // namespace

std::string SubscriberState::Describe() const {
  if (connected) {
    return absl::StrFormat(
        "control plane connected (streams opened: %d, assignments: %d, "
        "nacks: %d)",
        connects, assignments, nacks);
  }
  if (connects == 0) {
    return absl::StrFormat(
        "control plane not reachable yet; serving the local strategy (last error: %s)",
        last_error.empty() ? "none yet" : last_error);
  }
  return absl::StrFormat(
      "control plane disconnected; serving the last good strategy "
      "(last error: %s)",
      last_error);
}

StrategySubscriber::StrategySubscriber(SubscriberOptions options, StrategyHolder* holder,
                                       Scheduler* scheduler)
    : options_(std::move(options)), holder_(holder), scheduler_(scheduler) {}

StrategySubscriber::~StrategySubscriber() { Stop(); }

void StrategySubscriber::Start() {
  thread_ = std::thread([this] { Run(); });
}

void StrategySubscriber::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (context_ != nullptr) context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

SubscriberState StrategySubscriber::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

void StrategySubscriber::Run() {
  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.initial_backoff;
  const std::vector<std::string> addresses = absl::StrSplit(options_.control_plane, ',');
  size_t at = 0;
  while (true) {
    const int64_t connects_before = state().connects;
    const std::string& address = addresses[at];
    // The next try goes to the next replica: this one broke or could not be reached.
    at = (at + 1) % addresses.size();
    const std::string why = RunStream(address);
    bool was_connected;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      was_connected = state_.connects > connects_before;
      state_.connected = false;
      state_.last_error = why;
      state_.last_change = absl::Now();
    }
    if (was_connected) backoff = options_.initial_backoff;  // a stream that worked resets it
    // Full jitter in [backoff/2, backoff]: workers that lost the same service do not all
    // come back in the same instant.
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    const absl::Duration wait = backoff * jitter(rng);
    spdlog::log(was_connected ? spdlog::level::warn : spdlog::level::info,
                "event=control_plane_disconnected address={} error={} retry_in_ms={}", address,
                runtime::LogValue(why), absl::ToInt64Milliseconds(wait));
    backoff = std::min(backoff * 2, options_.max_backoff);
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), wait)) return;
  }
}

std::string StrategySubscriber::RunStream(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::StrategyDistribution::NewStub(channel);
  // An assignment whose strategy carries output projections names them by hash; they are
  // fetched from the registry on the same address (issue 18), once (fetched_ keeps the last).
  auto registry = v1::StrategyRegistry::NewStub(channel);
  auto resolve =
      [&](const ProjectionsHeader& h) -> absl::StatusOr<std::shared_ptr<const OutputProjections>> {
    for (const auto& p : fetched_) {
      if (p->sha256() == h.sha256) return p;
    }
    auto p = FetchProjections(registry.get(), h);
    if (!p.ok()) return p.status();
    spdlog::info("event=projections_fetched sha256={} bytes={}", h.sha256.substr(0, 16),
                 h.blob_bytes());
    fetched_.push_front(*p);
    if (fetched_.size() > kFetchedProjections) fetched_.pop_back();
    return p;
  };
  grpc::ClientContext context;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return "stopping";
    context_ = &context;
  }
  auto stream = stub->StreamStrategy(&context);
  absl::Mutex write_mu;  // the sync API allows one writer at a time
  auto write = [&](const v1::WorkerMessage& m) {
    absl::MutexLock lock(&write_mu);
    return stream->Write(m);
  };

  v1::WorkerMessage hello_msg;
  v1::WorkerHello* hello = hello_msg.mutable_hello();
  hello->set_worker_id(options_.worker_id);
  hello->set_model_fingerprint(options_.model_fingerprint);
  hello->set_model_name(options_.model_name);
  for (const auto& [k, v] : options_.labels) (*hello->mutable_labels())[k] = v;
  hello->set_address(options_.address);
  if (auto current = holder_->Current()) {
    hello->set_current_version(current->version);
    hello->set_current_strategy_id(current->strategy->id());
    if (options_.kv_bytes_per_token) {
      hello->set_kv_bytes_per_token(options_.kv_bytes_per_token(*current->strategy));
    }
  }
  absl::Notification done;
  std::thread loads;
  if (write(hello_msg)) {
    {
      absl::MutexLock lock(&mu_);
      state_.connected = true;
      ++state_.connects;
      state_.last_change = absl::Now();
    }
    spdlog::info("event=control_plane_connected address={} worker_id={} current_version={}",
                 address, runtime::LogValue(options_.worker_id), hello->current_version());
    loads = std::thread([&] {
      while (!done.WaitForNotificationWithTimeout(options_.load_interval)) {
        const SchedulerLoad l = scheduler_->Load();
        v1::WorkerMessage m;
        v1::WorkerLoad* load = m.mutable_load();
        load->set_running(l.running);
        load->set_queued(l.queued);
        load->set_kv_blocks_used(l.kv_blocks_used);
        load->set_kv_blocks_total(l.kv_blocks_total);
        load->set_draining(l.draining);
        if (!write(m)) return;
      }
    });
    v1::StrategyAssignment assignment;
    while (stream->Read(&assignment)) {
      v1::WorkerMessage reply;
      v1::StrategyAck* ack = reply.mutable_ack();
      ack->set_version(assignment.version());
      ack->set_strategy_id(assignment.strategy().id());
      auto strategy = FromProto(assignment.strategy(), resolve);
      absl::Status applied;
      if (!strategy.ok()) {
        // A bad message is invalid; projections that could not be fetched are a load failure.
        ack->set_reason(absl::IsInvalidArgument(strategy.status())
                            ? v1::NACK_REASON_INVALID_STRATEGY
                            : v1::NACK_REASON_LOAD_FAILURE);
        applied = strategy.status();
      } else if (strategy->model_fingerprint() != options_.model_fingerprint) {
        ack->set_reason(v1::NACK_REASON_FINGERPRINT_MISMATCH);
        applied = absl::FailedPreconditionError(
            absl::StrFormat("strategy.model_fingerprint %s is not this worker's model %s",
                            strategy->model_fingerprint(), options_.model_fingerprint));
      } else {
        auto shared = std::make_shared<const SharingStrategy>(std::move(*strategy));
        applied = holder_->Apply(assignment.version(), shared);
        if (!applied.ok()) {
          ack->set_reason(applied.code() == absl::StatusCode::kInvalidArgument
                              ? v1::NACK_REASON_INVALID_STRATEGY
                              : v1::NACK_REASON_LOAD_FAILURE);
        } else {
          if (options_.kv_bytes_per_token) {
            ack->set_kv_bytes_per_token(options_.kv_bytes_per_token(*shared));
          }
          if (options_.quality_probe != nullptr) {
            auto probe = options_.quality_probe->Measure(shared);
            if (probe.ok()) {
              ack->mutable_probe()->set_mean_nll(probe->mean_nll);
              ack->mutable_probe()->set_tokens(probe->tokens);
              spdlog::info(
                  "event=quality_probe version={} mean_nll={:.5f} tokens={} seconds={:.3f}",
                  assignment.version(), probe->mean_nll, probe->tokens, probe->seconds);
            } else {
              spdlog::warn("event=quality_probe_failed version={} error=\"{}\"",
                           assignment.version(), std::string(probe.status().message()));
            }
          }
        }
      }
      ack->set_applied(applied.ok());
      if (!applied.ok()) ack->set_error(std::string(applied.message()));
      {
        absl::MutexLock lock(&mu_);
        ++state_.assignments;
        if (!applied.ok()) ++state_.nacks;
      }
      if (applied.ok()) {
        spdlog::info("event=strategy_ack version={} strategy_id={} cause={}", assignment.version(),
                     assignment.strategy().id().substr(0, 16),
                     runtime::LogValue(assignment.cause()));
      } else {
        spdlog::warn("event=strategy_nack version={} reason={} error={} cause={}",
                     assignment.version(), ReasonName(ack->reason()),
                     runtime::LogValue(ack->error()), runtime::LogValue(assignment.cause()));
      }
      if (!write(reply)) break;
    }
  }
  done.Notify();
  if (loads.joinable()) loads.join();
  const grpc::Status status = stream->Finish();
  {
    absl::MutexLock lock(&mu_);
    context_ = nullptr;
  }
  if (status.ok()) return "the control plane ended the stream";
  return absl::StrFormat(
      "%s: %s", absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
      status.error_message());
}

}  // namespace kvshare
