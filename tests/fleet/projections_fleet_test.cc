// Output projections and linear substitutes (issue 18) through the registry, the wire and a
// worker, with real processes on loopback (a kvshare-search and one kvshare-worker on
// stories260K):
//   - publishing a strategy whose projections were not uploaded is FAILED_PRECONDITION naming
//     the hash; after UploadProjections it publishes, and GetStrategy + GetProjections give
//     back a strategy with the same id and the same bytes;
//   - a worker rolled to that version fetches the projections, ACKs, and serves it: its greedy
//     tokens and log-probabilities equal the local engine's with the same strategy (both with
//     an f32 KV cache, the engine's default; the worker's is f16 otherwise), and differ
//     from the same sharing without the projections (so a worker that ignored them would fail).
// No timing assertions: every wait is for a condition, with a generous deadline.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "proto/wire/projections_transfer.h"
#include "proto/wire/strategy_wire.h"
#include "tests/fleet/fleet_fixture.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using fleet_testing::Context;
using fleet_testing::FreePort;
using fleet_testing::WaitFor;
using Child = fleet_testing::Process;

struct Generated {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
};

// Greedy decoding of `prompt` on a local engine running `strategy`.
Generated LocalGreedy(const Model& model, std::shared_ptr<const SharingStrategy> strategy,
                      const std::vector<int32_t>& prompt, int n) {
  EngineOptions o;
  o.block_tokens = 16;
  o.kv_pool_bytes = 1024 * model.config().KvBytesPerToken();
  o.max_step_rows = 64;
  auto engine = Engine::Create(model, MakeCpuBackend(1), o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  auto seq = (*engine)->AddSequence(std::move(strategy));
  EXPECT_TRUE(seq.ok());
  const int vocab = model.config().vocab_size;
  Generated out;
  std::vector<int32_t> next = prompt;
  std::vector<float> logits;
  for (int i = 0; i < n; ++i) {
    StepInput in{*seq, absl::MakeConstSpan(next), false};
    EXPECT_TRUE((*engine)->Step({in}, &logits).ok());
    const float* row = logits.data() + logits.size() - vocab;
    int best = 0;
    double sum = 0;
    for (int v = 0; v < vocab; ++v) best = row[v] > row[best] ? v : best;
    for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - row[best]);
    out.tokens.push_back(best);
    out.logprobs.push_back(float(-std::log(sum)));
    next = {best};
  }
  return out;
}

TEST(ProjectionsFleetTest, AWorkerGivenAVersionWithProjectionsServesWhatTheLocalEngineDoes) {
  const std::string dir =
      absl::StrFormat("%s/projections_fleet.%d", ::testing::TempDir(), getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto loaded = Model::Load(testing::Asset("stories260K.bin"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Model& model = **loaded;
  const ModelConfig& c = model.config();

  // Layer 1 reads layer 0's cache through a replacement W_o far from the model's own; layer 3
  // drops its attention for a linear substitute (the same blob).
  const int q = c.n_heads * c.head_dim;
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 0.2f);
  std::vector<float> w(size_t(c.dim) * q);
  for (float& v : w) v = noise(rng);
  LinearSubstituteF32 sub{3, std::vector<float>(size_t(c.dim) * c.dim), std::vector<float>(c.dim)};
  for (float& v : sub.matrix) v = noise(rng);
  for (float& v : sub.bias) v = noise(rng);
  auto projections = OutputProjections::FromF32(DType::kF16, c.dim, q, {1}, {w}, {sub});
  ASSERT_TRUE(projections.ok()) << projections.status();
  auto plain = SharingStrategy::Create({0, 0, 2, 3, 4}, model.fingerprint(), {3});
  ASSERT_TRUE(plain.ok());
  auto with = plain->WithProjections(*projections);
  ASSERT_TRUE(with.ok()) << with.status();
  const auto strategy = std::make_shared<const SharingStrategy>(std::move(*with));

  const int port = FreePort();
  const std::string search_port_file = dir + "/search.port";
  Child search({KVSHARE_SEARCH_BINARY, "--data-dir", dir + "/data", "--port", std::to_string(port),
                "--port-file", search_port_file, "--metrics-port", "0", "--host", "127.0.0.1"},
               dir + "/search.log");
  search.Start();
  ASSERT_TRUE(WaitFor([&] { return fs::exists(search_port_file) || !search.Running(); }));
  ASSERT_TRUE(search.Running()) << search.Log();
  auto channel = grpc::CreateChannel(absl::StrFormat("127.0.0.1:%d", port),
                                     grpc::InsecureChannelCredentials());
  auto registry = v1::StrategyRegistry::NewStub(channel);
  auto rollouts = v1::Rollouts::NewStub(channel);

  // Publishing before the blob is there names what is missing.
  v1::PublishStrategyRequest publish;
  ToProto(*strategy, publish.mutable_strategy());
  publish.set_model_name("stories260K");
  EXPECT_FALSE(publish.strategy().output_projections().sha256().empty());
  v1::PublishStrategyResponse published;
  grpc::Status st = registry->PublishStrategy(Context().get(), publish, &published);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr((*projections)->sha256().substr(0, 64)));

  ASSERT_TRUE(UploadProjections(registry.get(), **projections).ok());
  st = registry->PublishStrategy(Context().get(), publish, &published);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(published.created());
  EXPECT_EQ(published.record().strategy().id(), strategy->id());
  const uint64_t version = published.record().version();

  // Read back over the wire: the same id and the same bytes.
  v1::GetStrategyRequest get;
  get.mutable_model_version()->set_model(model.fingerprint());
  get.mutable_model_version()->set_version(version);
  v1::StrategyRecord record;
  ASSERT_TRUE(registry->GetStrategy(Context().get(), get, &record).ok());
  auto back = FromProto(record.strategy(), [&](const ProjectionsHeader& h) {
    return FetchProjections(registry.get(), h);
  });
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), strategy->id());
  ASSERT_NE(back->projections(), nullptr);
  EXPECT_EQ(back->projections()->blob(), (*projections)->blob());

  // A worker rolled to it fetches the projections and serves them.
  const std::string worker_port_file = dir + "/worker.port";
  std::vector<std::string> worker_args =
      testing::FleetWorkerArgs(KVSHARE_WORKER_BINARY, testing::Asset("stories260K.bin"),
                               worker_port_file, absl::StrFormat("127.0.0.1:%d", port), "w-p");
  worker_args.insert(worker_args.end(), {"--kv-type", "f32"});
  Child worker(worker_args, dir + "/worker.log");
  worker.Start();
  ASSERT_TRUE(WaitFor([&] { return fs::exists(worker_port_file) || !worker.Running(); }));
  ASSERT_TRUE(worker.Running()) << worker.Log();
  auto inference = v1::InferenceService::NewStub(
      grpc::CreateChannel(absl::StrFormat("127.0.0.1:%s", testing::ReadFileOrDie(worker_port_file)),
                          grpc::InsecureChannelCredentials()));
  auto version_of_worker = [&]() -> int64_t {
    v1::GetLoadResponse load;
    if (!inference->GetLoad(Context(5).get(), v1::GetLoadRequest(), &load).ok()) return -1;
    return int64_t(load.strategy_version());
  };
  ASSERT_TRUE(WaitFor([&] { return version_of_worker() == 0; })) << worker.Log();
  v1::CreateRolloutRequest rollout;
  rollout.set_model(model.fingerprint());
  rollout.set_target_version(version);
  rollout.add_steps(100);
  // The test's strategy records no held-out quality; the quality gate would refuse it.
  rollout.set_allow_quality_regression(true);
  v1::Rollout created;
  st = rollouts->CreateRollout(Context().get(), rollout, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(WaitFor([&] { return version_of_worker() == int64_t(version); }))
      << worker.Log() << search.Log();
  EXPECT_THAT(worker.Log(), HasSubstr("event=projections_fetched"));

  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378, 1165 % c.vocab_size};
  constexpr int kTokens = 12;
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  request.set_max_tokens(kTokens);
  request.set_ignore_eos(true);
  request.set_logprobs(1);
  request.set_strategy_version(version);
  auto ctx = Context(60);
  auto reader = inference->Generate(ctx.get(), request);
  Generated served;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_start()) {
      EXPECT_EQ(msg.start().strategy_version(), version);
    }
    if (!msg.has_chunk()) continue;
    for (int32_t id : msg.chunk().token_ids()) served.tokens.push_back(id);
    for (const auto& lp : msg.chunk().logprobs()) served.logprobs.push_back(lp.logprob());
  }
  ASSERT_TRUE(reader->Finish().ok());

  const Generated local = LocalGreedy(model, strategy, prompt, kTokens);
  const Generated without =
      LocalGreedy(model, std::make_shared<const SharingStrategy>(*plain), prompt, kTokens);
  EXPECT_EQ(served.tokens, local.tokens);
  ASSERT_EQ(served.logprobs.size(), local.logprobs.size());
  for (size_t i = 0; i < local.logprobs.size(); ++i) {
    EXPECT_NEAR(served.logprobs[i], local.logprobs[i], 1e-3) << "token " << i;
  }
  // The projections change what the model says: a worker ignoring them could not pass above.
  EXPECT_NE(local.tokens, without.tokens);
}

}  // namespace
}  // namespace kvshare
