// grpc.health.v1 says SERVING only while the worker can serve: not while the model loads, not
// once a drain has begun. Until ready, every RPC is UNAVAILABLE; server reflection lists the
// inference service.
#include "gtest/gtest.h"
#include "tests/inference/grpc_probe.h"
#include "tests/inference/worker_fixture.h"

namespace kvshare {
namespace {

using testing::CheckHealth;
using testing::Collect;
using testing::HealthStatus;
using testing::LoopbackWorker;

constexpr char kService[] = "kvshare.v1.InferenceService";

v1::GenerateRequest Small() {
  v1::GenerateRequest r;
  r.set_text("Once upon a time");
  r.set_max_tokens(4);
  return r;
}

TEST(HealthTest, NotServingUntilTheModelIsLoadedAndAStrategyApplied) {
  auto w = LoopbackWorker::Start(testing::StoriesWorkerOptions(), /*ready=*/false);
  ASSERT_NE(w, nullptr);
  for (const char* service : {"", kService}) {
    auto health = CheckHealth(w->channel, service);
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, HealthStatus::kNotServing) << "service '" << service << "'";
  }
  const testing::Streamed early = Collect(*w->stub, Small());
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(early.got_start);
  {
    grpc::ClientContext ctx;
    v1::GetLoadResponse load;
    EXPECT_EQ(w->stub->GetLoad(&ctx, v1::GetLoadRequest(), &load).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }

  ASSERT_TRUE(w->Load());
  for (const char* service : {"", kService}) {
    auto health = CheckHealth(w->channel, service);
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, HealthStatus::kServing) << "service '" << service << "'";
  }
  EXPECT_TRUE(Collect(*w->stub, Small()).status.ok());
}

TEST(HealthTest, DrainTurnsHealthNotServingAndRefusesNewRequests) {
  auto w = LoopbackWorker::Start(testing::StoriesWorkerOptions());
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->server->Drain(absl::Seconds(5)));
  auto health = CheckHealth(w->channel, kService);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthStatus::kNotServing);
  const testing::Streamed late = Collect(*w->stub, Small());
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(w->GetLoad().draining());
}

TEST(HealthTest, ReflectionListsTheInferenceService) {
  auto w = LoopbackWorker::Start(testing::StoriesWorkerOptions());
  ASSERT_NE(w, nullptr);
  auto raw = testing::ListServicesRaw(w->channel);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_NE(raw->find(kService), std::string::npos);
  EXPECT_NE(raw->find("grpc.health.v1.Health"), std::string::npos);
}

TEST(HealthTest, ModelInfoDescribesModelStrategyAndCapacity) {
  WorkerOptions o = testing::StoriesWorkerOptions();
  o.kv_budget_bytes = 100 * 4096;  // 100 blocks of 16 tokens
  auto w = LoopbackWorker::Start(o);
  ASSERT_NE(w, nullptr);
  grpc::ClientContext ctx;
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(w->stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.config().n_layers(), 5);
  EXPECT_EQ(info.config().vocab_size(), 512);
  EXPECT_EQ(info.fingerprint(), w->worker->model().fingerprint());
  EXPECT_EQ(info.strategy_version(), 1u);
  EXPECT_EQ(info.strategy().kv_source_size(), 5);
  EXPECT_EQ(info.kv_blocks_total(), 100);
  EXPECT_EQ(info.block_tokens(), 16);
  EXPECT_EQ(info.kv_bytes_per_token(), 1280);
  EXPECT_EQ(info.capacity_tokens(), 100 / 5 * 16);
  EXPECT_EQ(info.capacity_tokens_unshared(), 100 / 5 * 16);
  EXPECT_EQ(info.max_tokens_limit(), 512);

  // A strategy where layers 1..4 read layer 0: a fifth of the bytes, five times the tokens.
  auto shared = SharingStrategy::Create({0, 0, 0, 0, 0}, w->worker->model().fingerprint());
  ASSERT_TRUE(shared.ok());
  ASSERT_TRUE(
      w->worker->strategies().Publish(2, std::make_shared<const SharingStrategy>(*shared)).ok());
  grpc::ClientContext ctx2;
  ASSERT_TRUE(w->stub->GetModelInfo(&ctx2, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.strategy_version(), 2u);
  EXPECT_EQ(info.kv_bytes_per_token(), 256);
  EXPECT_EQ(info.capacity_tokens(), 100 * 16);
  EXPECT_EQ(info.available_strategy_versions_size(), 2);
}

}  // namespace
}  // namespace kvshare
