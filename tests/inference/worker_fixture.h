// A real worker on loopback for the inference tests: InferenceWorker + InferenceServer in this
// process, a channel to it, and helpers that run one Generate stream to its end.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "inference_service/inference_server.h"
#include "inference_service/inference_worker.h"
#include "inference_service/serving_metrics.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "spdlog/spdlog.h"
#include "tests/support/test_env.h"

namespace kvshare::testing {

// Small defaults: a 5-layer model, 2 engine threads, a modest pool.
inline WorkerOptions StoriesWorkerOptions() {
  WorkerOptions o;
  o.model_path = Asset("stories260K.bin");
  o.threads = 2;
  o.kv_budget_bytes = 4LL << 20;
  o.kv_type = KvType::kF32;  // the tests pin fp32 pool sizes and outputs
  return o;
}

inline WorkerOptions SmolLm2WorkerOptions() {
  WorkerOptions o;
  o.model_path = SmolLm2Path();
  o.threads = 2;
  o.kv_budget_bytes = 64LL << 20;
  o.kv_type = KvType::kF32;
  return o;
}

class LoopbackWorker {
 public:
  // Loads the worker, or only starts the server (not ready) when `ready` is false.
  static std::unique_ptr<LoopbackWorker> Start(const WorkerOptions& options, bool ready = true) {
    spdlog::set_level(spdlog::level::warn);
    auto w = std::unique_ptr<LoopbackWorker>(new LoopbackWorker());
    w->metrics = std::make_unique<ServingMetrics>();
    auto server = InferenceServer::Start("127.0.0.1:0", w->metrics.get());
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    w->server = std::move(*server);
    w->channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", w->server->port()),
                                     grpc::InsecureChannelCredentials());
    w->stub = v1::InferenceService::NewStub(w->channel);
    w->options = options;
    if (ready && !w->Load()) return nullptr;
    return w;
  }
  bool Load() {
    auto worker = InferenceWorker::Load(options, metrics.get());
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return false;
    this->worker = std::move(*worker);
    server->SetWorker(this->worker.get());
    return true;
  }
  ~LoopbackWorker() {
    if (server) server->Shutdown(absl::Seconds(5));
    server.reset();
    worker.reset();
  }

  v1::GetLoadResponse GetLoad() {
    grpc::ClientContext ctx;
    v1::GetLoadResponse load;
    EXPECT_TRUE(stub->GetLoad(&ctx, v1::GetLoadRequest(), &load).ok());
    return load;
  }
  // Polls GetLoad until every KV block is free and nothing runs (true), or `timeout` passes.
  bool WaitForEmptyPool(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      v1::GetLoadResponse l = GetLoad();
      if (l.kv_blocks_free() == l.kv_blocks_total() && l.running() == 0 && l.queued() == 0 &&
          l.kv_blocks_reserved() == 0) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  WorkerOptions options;
  std::unique_ptr<ServingMetrics> metrics;
  std::unique_ptr<InferenceServer> server;
  std::unique_ptr<InferenceWorker> worker;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::InferenceService::Stub> stub;

 private:
  LoopbackWorker() = default;
};

// Everything one Generate stream delivered.
struct Streamed {
  grpc::Status status;
  v1::GenerateStart start;
  std::vector<int32_t> ids;
  std::string text;
  std::vector<v1::TokenLogProbs> logprobs;
  v1::GenerateEnd end;
  bool got_start = false, got_end = false;
  int chunks = 0;
};

inline Streamed Collect(v1::InferenceService::Stub& stub, const v1::GenerateRequest& request,
                        grpc::ClientContext* ctx) {
  Streamed out;
  auto reader = stub.Generate(ctx, request);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_start()) {
      EXPECT_FALSE(out.got_start) << "two start messages";
      EXPECT_EQ(out.chunks, 0) << "start after tokens";
      out.start = msg.start();
      out.got_start = true;
    } else if (msg.has_chunk()) {
      EXPECT_TRUE(out.got_start) << "tokens before start";
      EXPECT_FALSE(out.got_end) << "tokens after end";
      ++out.chunks;
      out.ids.insert(out.ids.end(), msg.chunk().token_ids().begin(), msg.chunk().token_ids().end());
      out.text += msg.chunk().text();
      for (const auto& lp : msg.chunk().logprobs()) out.logprobs.push_back(lp);
    } else if (msg.has_end()) {
      out.end = msg.end();
      out.got_end = true;
    }
  }
  out.status = reader->Finish();
  return out;
}

inline Streamed Collect(v1::InferenceService::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext ctx;
  return Collect(stub, request, &ctx);
}

}  // namespace kvshare::testing
