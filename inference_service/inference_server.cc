#include "inference_service/inference_server.h"

#include <chrono>
#include <random>

#include "absl/strings/str_format.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "inference_service/generate_stream.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "proto/wire/strategy_wire.h"
#include "spdlog/spdlog.h"

namespace kvshare {

class InferenceServiceImpl final : public v1::InferenceService::CallbackService {
 public:
  explicit InferenceServiceImpl(ServingMetrics* metrics) : metrics_(metrics) {
    std::random_device rd;
    id_prefix_ = absl::StrFormat("%08x", rd());
  }

  void SetWorker(InferenceWorker* worker) { worker_.store(worker); }
  void SetControlPlaneStatus(std::function<std::string()> status) {
    control_plane_status_ = std::move(status);
  }
  StreamCounter& streams() { return streams_; }
  InferenceWorker* worker() const { return worker_.load(); }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override {
    InferenceWorker* worker = worker_.load();
    if (worker == nullptr) {
      if (metrics_ != nullptr) metrics_->requests("unavailable").Increment();
      auto* reactor = new RefusedStream();
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker is loading its model"));
      return reactor;
    }
    std::string id = request->request_id();
    if (id.empty()) id = absl::StrFormat("%s-%d", id_prefix_, next_id_.fetch_add(1));
    return new GenerateStream(*worker, streams_, context, *request, std::move(id));
  }

  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest*,
                                         v1::GetModelInfoResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    InferenceWorker* worker = worker_.load();
    if (worker == nullptr) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker is loading its model"));
      return reactor;
    }
    const Model& model = worker->model();
    const ModelConfig& c = model.config();
    v1::ModelConfig* config = response->mutable_config();
    config->set_name(c.name);
    config->set_architecture(c.architecture);
    config->set_dim(c.dim);
    config->set_hidden_dim(c.hidden_dim);
    config->set_n_layers(c.n_layers);
    config->set_n_heads(c.n_heads);
    config->set_n_kv_heads(c.n_kv_heads);
    config->set_head_dim(c.head_dim);
    config->set_vocab_size(c.vocab_size);
    config->set_max_seq_len(c.max_seq_len);
    config->set_rope_theta(c.rope_theta);
    config->set_norm_eps(c.norm_eps);
    response->set_fingerprint(model.fingerprint());

    Scheduler& scheduler = worker->scheduler();
    const int64_t blocks = scheduler.total_blocks();
    response->set_block_tokens(scheduler.block_tokens());
    response->set_kv_blocks_total(blocks);
    // The pool's bytes per token for its KV type (exact when block_tokens divides a block).
    auto bytes_per_token = [&](int owning) {
      return scheduler.block_bytes() * owning / scheduler.block_tokens();
    };
    response->set_kv_bytes_per_token_unshared(bytes_per_token(c.n_layers));
    response->set_capacity_tokens_unshared(blocks / c.n_layers * scheduler.block_tokens());
    if (auto current = worker->strategies().Current()) {
      const SharingStrategy& s = *current->strategy;
      ToProto(s, response->mutable_strategy());
      response->set_strategy_version(current->version);
      response->set_kv_bytes_per_token(bytes_per_token(s.owning_layers()));
      response->set_capacity_tokens(blocks / s.owning_layers() * scheduler.block_tokens());
    }
    for (uint64_t v : worker->strategies().Versions()) {
      response->add_available_strategy_versions(v);
    }
    response->set_max_tokens_limit(MaxTokensLimit(worker->limits(), c.max_seq_len));
    response->set_backend(scheduler.backend_name());
    const DeviceInfo& device = worker->device();
    response->set_device_kind(device.kind);
    response->set_device_name(device.name);
    response->set_device_memory_total_bytes(device.total_memory_bytes);
    response->set_device_memory_free_bytes(device.free_memory_bytes);
    response->set_device_note(worker->device_note());
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context, const v1::GetLoadRequest*,
                                    v1::GetLoadResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    InferenceWorker* worker = worker_.load();
    if (worker == nullptr) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker is loading its model"));
      return reactor;
    }
    const SchedulerLoad load = worker->scheduler().Load();
    response->set_running(load.running);
    response->set_queued(load.queued);
    response->set_queue_capacity(load.queue_capacity);
    response->set_kv_blocks_used(load.kv_blocks_used);
    response->set_kv_blocks_free(load.kv_blocks_free);
    response->set_kv_blocks_total(load.kv_blocks_total);
    response->set_kv_blocks_reserved(load.kv_blocks_reserved);
    response->set_draining(load.draining);
    if (control_plane_status_) response->set_control_plane(control_plane_status_());
    if (auto current = worker->strategies().Current()) {
      response->set_strategy_version(current->version);
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  // A Generate refused before any worker exists.
  class RefusedStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
    void OnDone() override { delete this; }
  };

  ServingMetrics* const metrics_;
  std::atomic<InferenceWorker*> worker_{nullptr};
  // Set before the worker (SetWorker publishes it to the handlers), never changed after.
  std::function<std::string()> control_plane_status_;
  StreamCounter streams_;
  std::string id_prefix_;
  std::atomic<int64_t> next_id_{1};
};

absl::StatusOr<std::unique_ptr<InferenceServer>> InferenceServer::Start(const std::string& address,
                                                                        ServingMetrics* metrics) {
  std::unique_ptr<InferenceServer> server(new InferenceServer());
  server->service_ = std::make_unique<InferenceServiceImpl>(metrics);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
  // gRPC sets SO_REUSEPORT by default, so a second server on a busy port would start and
  // share it; without it the bind fails and start-up says which port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s", address));
  }
  server->SetServing(false);
  return server;
}

InferenceServer::~InferenceServer() { Shutdown(absl::ZeroDuration()); }

void InferenceServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // the overall ("") status
  health->SetServingStatus(v1::InferenceService::service_full_name(), serving);
}

void InferenceServer::SetControlPlaneStatus(std::function<std::string()> status) {
  service_->SetControlPlaneStatus(std::move(status));
}

void InferenceServer::SetWorker(InferenceWorker* worker) {
  service_->SetWorker(worker);
  SetServing(worker != nullptr);
}

bool InferenceServer::Drain(absl::Duration grace) {
  SetServing(false);
  InferenceWorker* worker = service_->worker();
  if (worker == nullptr) return true;
  const absl::Time deadline = absl::Now() + grace;
  Scheduler& scheduler = worker->scheduler();
  scheduler.StopAdmitting();
  const SchedulerLoad load = scheduler.Load();
  spdlog::info("event=drain_started running={} queued={} grace_s={}", load.running, load.queued,
               absl::ToDoubleSeconds(grace));
  // Every accepted request ends (its last token sampled), then its stream writes the rest.
  bool clean =
      scheduler.WaitUntilIdle(grace) && service_->streams().WaitForZero(deadline - absl::Now());
  if (!clean) {
    scheduler.CancelAll(absl::UnavailableError(absl::StrFormat(
        "worker shutting down: drain grace of %s ran out", absl::FormatDuration(grace))));
    // The cut streams still get their last message; a client that does not read it is cut
    // by Shutdown's deadline.
    scheduler.WaitUntilIdle(absl::Seconds(10));
    service_->streams().WaitForZero(absl::Seconds(2));
  }
  spdlog::log(clean ? spdlog::level::info : spdlog::level::warn, "event=drain_done clean={}",
              clean);
  return clean;
}

void InferenceServer::Shutdown(absl::Duration deadline) {
  if (shut_down_.exchange(true)) return;
  SetServing(false);
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
  server_->Wait();
}

}  // namespace kvshare
