// The fleet's control plane with real processes on loopback: a kvshare-search and several
// kvshare-worker processes (stories260K) holding strategy streams to it.
//   - a rollout in steps reaches every worker, and a step does not advance while a selected
//     worker has not ACKed (that worker is stopped with SIGSTOP);
//   - a worker running another model NACKs (fingerprint mismatch) and the rollout pauses;
//   - abort sends the workers a rollout moved back to the version they ran before;
//   - kill -9 of the search service mid-rollout: workers keep serving; after a restart the
//     rollout is where it was and finishes;
//   - a worker killed and restarted rejoins on the version assigned to it;
//   - a Generate stream running across a version switch is not cut and reports the version it
//     started on; new requests take the new version; pinning a version not held is
//     FAILED_PRECONDITION.
// No timing assertions: every wait is for a condition, with a generous deadline.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/server/rollout_controller.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kDeadlineSeconds = 90;

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Polls `condition` until it holds (true) or the deadline passes (false).
bool WaitFor(const std::function<bool()>& condition, int seconds = kDeadlineSeconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

std::unique_ptr<grpc::ClientContext> Context(int seconds = 30) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return c;
}

// One child process; its stdout and stderr go to `log`.
class Process {
 public:
  Process(std::vector<std::string> args, std::string log)
      : args_(std::move(args)), log_(std::move(log)) {}
  ~Process() { Kill(SIGKILL); }
  void Start() {
    std::vector<char*> argv;
    for (std::string& a : args_) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  void Kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  bool Running() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }
  std::string Log() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::vector<std::string> args_;
  const std::string log_;
  pid_t pid_ = -1;
};

class FleetTest : public ::testing::Test {
 protected:
  struct Worker {
    std::string id;
    std::unique_ptr<Process> process;
    std::string port_file;
    std::unique_ptr<v1::InferenceService::Stub> stub;
  };

  void SetUp() override {
    dir_ = absl::StrFormat("%s/fleet_test.%d.%s", ::testing::TempDir(), getpid(),
                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    search_port_ = FreePort();
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    fingerprint_ = (*model)->fingerprint();
    StartSearch();
  }

  void TearDown() override {
    if (HasFailure()) {
      if (search_) std::cerr << "--- kvshare-search log:\n" << search_->Log();
      for (auto& [id, w] : workers_) {
        if (w.process) std::cerr << "--- worker " << id << " log:\n" << w.process->Log();
      }
    }
    for (auto& [id, w] : workers_) w.process.reset();
    search_.reset();
  }

  void StartSearch() {
    const std::string port_file = dir_ + "/search.port";
    fs::remove(port_file);
    search_ = std::make_unique<Process>(
        std::vector<std::string>{KVSHARE_SEARCH_BINARY, "--data-dir", dir_ + "/data", "--port",
                                 std::to_string(search_port_), "--port-file", port_file,
                                 "--metrics-port", "0", "--host", "127.0.0.1", "--log-level",
                                 "debug"},
        dir_ + "/search.log");
    search_->Start();
    ASSERT_TRUE(WaitFor([&] { return fs::exists(port_file) || !search_->Running(); }));
    ASSERT_TRUE(search_->Running()) << search_->Log();
    auto channel = grpc::CreateChannel(absl::StrFormat("127.0.0.1:%d", search_port_),
                                       grpc::InsecureChannelCredentials());
    registry_ = v1::StrategyRegistry::NewStub(channel);
    rollouts_ = v1::Rollouts::NewStub(channel);
  }

  // Starts a worker with the given id (stories260K unless `model` says otherwise).
  Worker& StartWorker(const std::string& id, std::vector<std::string> extra = {},
                      const std::string& model = "") {
    Worker& w = workers_[id];
    w.id = id;
    w.port_file = absl::StrFormat("%s/worker-%s.port", dir_, id);
    fs::remove(w.port_file);
    std::vector<std::string> args = {KVSHARE_WORKER_BINARY,
                                     "--model",
                                     model.empty() ? testing::Asset("stories260K.bin") : model,
                                     "--threads",
                                     "1",
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     "0",
                                     "--port-file",
                                     w.port_file,
                                     "--metrics-port",
                                     "0",
                                     "--kv-budget-mib",
                                     "4",
                                     "--control-plane",
                                     absl::StrFormat("127.0.0.1:%d", search_port_),
                                     "--worker-id",
                                     id,
                                     "--load-interval",
                                     "0.2"};
    args.insert(args.end(), extra.begin(), extra.end());
    w.process = std::make_unique<Process>(args, absl::StrFormat("%s/worker-%s.log", dir_, id));
    w.process->Start();
    EXPECT_TRUE(WaitFor([&] { return fs::exists(w.port_file) || !w.process->Running(); }));
    EXPECT_TRUE(w.process->Running()) << w.process->Log();
    const std::string port = testing::ReadFileOrDie(w.port_file);
    w.stub = v1::InferenceService::NewStub(grpc::CreateChannel(
        absl::StrFormat("127.0.0.1:%d", std::stoi(port)), grpc::InsecureChannelCredentials()));
    EXPECT_TRUE(WaitFor([&] { return Load(id).ok(); })) << "worker " << id << " never ready";
    return w;
  }

  absl::StatusOr<v1::GetLoadResponse> Load(const std::string& id) {
    v1::GetLoadResponse load;
    grpc::Status s = workers_[id].stub->GetLoad(Context(5).get(), v1::GetLoadRequest(), &load);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return load;
  }
  // The version new requests on worker `id` take (nullopt when it does not answer).
  std::optional<uint64_t> VersionOf(const std::string& id) {
    auto load = Load(id);
    if (!load.ok()) return std::nullopt;
    return load->strategy_version();
  }

  uint64_t Publish(const std::vector<int>& kv_source, const std::string& fingerprint = "") {
    auto s = SharingStrategy::Create(kv_source, fingerprint.empty() ? fingerprint_ : fingerprint);
    EXPECT_TRUE(s.ok()) << s.status();
    v1::PublishStrategyRequest req;
    ToProto(*s, req.mutable_strategy());
    req.set_model_name("stories260K");
    v1::PublishStrategyResponse resp;
    grpc::Status st = registry_->PublishStrategy(Context().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.record().version();
  }

  v1::Rollout Create(uint64_t target, std::vector<uint32_t> steps,
                     const std::string& selector = "") {
    v1::CreateRolloutRequest req;
    req.set_model(fingerprint_);
    req.set_target_version(target);
    for (uint32_t s : steps) req.add_steps(s);
    req.set_label_selector(selector);
    v1::Rollout r;
    grpc::Status st = rollouts_->CreateRollout(Context().get(), req, &r);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return r;
  }

  absl::StatusOr<v1::Rollout> Get(const std::string& id) {
    v1::RolloutRef ref;
    ref.set_rollout_id(id);
    v1::Rollout r;
    grpc::Status st = rollouts_->GetRollout(Context(5).get(), ref, &r);
    if (!st.ok()) return absl::UnavailableError(st.error_message());
    return r;
  }

  bool WaitForState(const std::string& id, v1::RolloutState state) {
    return WaitFor([&] {
      auto r = Get(id);
      return r.ok() && r->state() == state;
    });
  }

  v1::FleetStatus Fleet() {
    v1::FleetStatus f;
    EXPECT_TRUE(rollouts_->GetFleetStatus(Context().get(), v1::GetFleetStatusRequest(), &f).ok());
    return f;
  }

  // Waits until the fleet view shows `n` connected workers.
  bool WaitForConnected(size_t n) {
    return WaitFor([&] {
      v1::FleetStatus f;
      if (!rollouts_->GetFleetStatus(Context(5).get(), v1::GetFleetStatusRequest(), &f).ok()) {
        return false;
      }
      size_t c = 0;
      for (const auto& w : f.workers()) c += w.connected();
      return c == n;
    });
  }

  std::string dir_;
  int search_port_ = 0;
  std::string fingerprint_;
  std::unique_ptr<Process> search_;
  std::map<std::string, Worker> workers_;
  std::unique_ptr<v1::StrategyRegistry::Stub> registry_;
  std::unique_ptr<v1::Rollouts::Stub> rollouts_;
};

TEST_F(FleetTest, AStepAdvancesOnlyOnceItsWorkersAckedAndTheRolloutReachesEveryWorker) {
  for (const char* id : {"w-a", "w-b", "w-c"}) StartWorker(id);
  ASSERT_TRUE(WaitForConnected(3));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  // The worker the first step (33% of 3 = 1 worker) selects cannot ACK while stopped.
  const std::string first = RolloutSelectionOrder({"w-a", "w-b", "w-c"}).front();
  workers_[first].process->Signal(SIGSTOP);

  const v1::Rollout created = Create(v1, {33, 66, 100});
  ASSERT_TRUE(WaitFor([&] {
    auto r = Get(created.rollout_id());
    return r.ok() && r->selected_workers_size() >= 1;
  }));
  auto r = Get(created.rollout_id());
  ASSERT_TRUE(r.ok());
  // Selection and the gate run in the same step: the first observed state is still step 1.
  EXPECT_EQ(r->selected_workers(0), first);
  EXPECT_EQ(r->current_step(), 0u);
  EXPECT_EQ(r->acked_workers(), 0u);
  EXPECT_EQ(r->state(), v1::ROLLOUT_RUNNING);
  for (const char* id : {"w-a", "w-b", "w-c"}) {
    if (id != first) {
      EXPECT_EQ(VersionOf(id), 0u) << id << " moved before its step";
    }
  }

  workers_[first].process->Signal(SIGCONT);
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));
  r = Get(created.rollout_id());
  EXPECT_EQ(r->current_step(), 2u);
  EXPECT_EQ(r->selected_workers_size(), 3);
  EXPECT_EQ(r->selected_workers(0), first);  // sticky: never re-picked
  for (const char* id : {"w-a", "w-b", "w-c"}) EXPECT_EQ(VersionOf(id), v1) << id;
  const v1::FleetStatus fleet = Fleet();
  ASSERT_EQ(fleet.workers_size(), 3);
  for (const auto& w : fleet.workers()) {
    EXPECT_EQ(w.current_version(), v1) << w.worker_id();
    EXPECT_TRUE(w.last_ack().applied()) << w.worker_id();
    EXPECT_EQ(w.owning_layers(), 4) << w.worker_id();
  }
}

TEST_F(FleetTest, AWorkerOfAnotherModelNacksAndTheRolloutPausesWithItsReason) {
  // A copy of stories260K with one weight changed: same shape, another fingerprint.
  const std::string other = dir_ + "/other";
  fs::create_directories(other);
  fs::copy_file(testing::Asset("stories260K.bin"), other + "/stories260K.bin");
  fs::copy_file(testing::Asset("tok512.bin"), other + "/tok512.bin");
  {
    std::fstream f(other + "/stories260K.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(28 + 4 * 1000);
    const char bytes[4] = {0, 0, static_cast<char>(0x80), 0x3f};  // 1.0f
    f.write(bytes, 4);
  }
  StartWorker("good", {"--label", "pool=a"});
  StartWorker("foreign", {"--label", "pool=a"}, other + "/stories260K.bin");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});

  const v1::Rollout created = Create(v1, {100}, "pool=a");
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_PAUSED));
  const auto r = Get(created.rollout_id());
  EXPECT_THAT(r->state_reason(), HasSubstr("worker foreign NACKed version 1"));
  EXPECT_THAT(r->state_reason(), HasSubstr("NACK_REASON_FINGERPRINT_MISMATCH"));
  // The foreign worker keeps its last good version and keeps serving.
  EXPECT_EQ(VersionOf("foreign"), 0u);
  ASSERT_TRUE(WaitFor([&] { return VersionOf("good") == v1; }));
  v1::FleetStatus fleet = Fleet();
  for (const auto& w : fleet.workers()) {
    if (w.worker_id() != "foreign") continue;
    EXPECT_FALSE(w.last_ack().applied());
    EXPECT_EQ(w.last_ack().reason(), v1::NACK_REASON_FINGERPRINT_MISMATCH);
    EXPECT_THAT(w.last_ack().error(), HasSubstr("is not this worker's model"));
  }
  v1::GenerateRequest g;
  g.set_text("Once upon a time");
  g.set_max_tokens(4);
  auto ctx = Context();
  auto reader = workers_["foreign"].stub->Generate(ctx.get(), g);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(FleetTest, AbortSendsTheWorkersTheRolloutMovedBackToThePreviousVersion) {
  StartWorker("w-a");
  StartWorker("w-b");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  const v1::Rollout first = Create(v1, {100});
  ASSERT_TRUE(WaitForState(first.rollout_id(), v1::ROLLOUT_COMPLETED));

  const uint64_t v2 = Publish({0, 0, 2, 2, 4});
  const auto order = RolloutSelectionOrder({"w-a", "w-b"});
  workers_[order[1]].process->Signal(SIGSTOP);  // holds the second step up
  const v1::Rollout second = Create(v2, {50, 100});
  ASSERT_TRUE(WaitFor([&] { return VersionOf(order[0]) == v2; }));
  ASSERT_TRUE(WaitFor([&] {
    auto r = Get(second.rollout_id());
    return r.ok() && r->current_step() == 1;
  }));
  EXPECT_EQ(Get(second.rollout_id())->from_version(), v1);

  v1::RolloutRef ref;
  ref.set_rollout_id(second.rollout_id());
  v1::Rollout aborted;
  ASSERT_TRUE(rollouts_->AbortRollout(Context().get(), ref, &aborted).ok());
  EXPECT_EQ(aborted.state(), v1::ROLLOUT_ABORTED);
  workers_[order[1]].process->Signal(SIGCONT);
  for (const std::string& id : order) {
    ASSERT_TRUE(WaitFor([&] { return VersionOf(id) == v1; })) << id;
  }
  ASSERT_TRUE(WaitFor([&] {
    const v1::FleetStatus f = Fleet();
    for (const auto& w : f.workers()) {
      if (w.current_version() != v1 || !w.last_ack().applied()) return false;
    }
    return f.workers_size() == 2;
  }));
  // Aborting twice is refused, naming the state.
  grpc::Status again = rollouts_->AbortRollout(Context().get(), ref, &aborted);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(again.error_message(), HasSubstr("is aborted"));
}

TEST_F(FleetTest, KillingTheSearchServiceMidRolloutLeavesWorkersServingAndTheRolloutResumes) {
  StartWorker("w-a");
  StartWorker("w-b");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  const auto order = RolloutSelectionOrder({"w-a", "w-b"});
  workers_[order[1]].process->Signal(SIGSTOP);
  const v1::Rollout created = Create(v1, {50, 100});
  ASSERT_TRUE(WaitFor([&] {
    auto r = Get(created.rollout_id());
    return r.ok() && r->current_step() == 1 && r->selected_workers_size() == 2;
  }));
  ASSERT_EQ(VersionOf(order[0]), v1);

  search_->Kill(SIGKILL);
  // The worker keeps serving on its version, and says the control plane is gone.
  ASSERT_TRUE(WaitFor([&] {
    auto load = Load(order[0]);
    return load.ok() && load->control_plane().find("disconnected") != std::string::npos;
  }));
  v1::GenerateRequest g;
  g.set_text("Once upon a time");
  g.set_max_tokens(4);
  auto ctx = Context();
  auto reader = workers_[order[0]].stub->Generate(ctx.get(), g);
  v1::GenerateResponse msg;
  uint64_t ran_on = 99;
  while (reader->Read(&msg)) {
    if (msg.has_start()) ran_on = msg.start().strategy_version();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ran_on, v1);

  StartSearch();
  auto r = Get(created.rollout_id());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->state(), v1::ROLLOUT_RUNNING);
  EXPECT_EQ(r->current_step(), 1u);
  EXPECT_EQ(r->selected_workers_size(), 2);
  workers_[order[1]].process->Signal(SIGCONT);
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));
  for (const std::string& id : order) EXPECT_EQ(VersionOf(id), v1) << id;
}

TEST_F(FleetTest, AWorkerKilledAndRestartedRejoinsOnTheVersionAssignedToIt) {
  StartWorker("w-a");
  StartWorker("w-b");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  const v1::Rollout created = Create(v1, {100});
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));

  workers_["w-b"].process->Kill(SIGKILL);
  ASSERT_TRUE(WaitForConnected(1));
  StartWorker("w-b");  // comes back on the identity (version 0), then is moved
  ASSERT_TRUE(WaitFor([&] { return VersionOf("w-b") == v1; }));
  ASSERT_TRUE(WaitForConnected(2));
}

TEST_F(FleetTest, AStreamAcrossAVersionSwitchRunsToItsEndOnTheVersionItStartedOn) {
  StartWorker("w-a");
  ASSERT_TRUE(WaitForConnected(1));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});

  v1::GenerateRequest long_request;
  long_request.set_text("Once upon a time");
  long_request.set_max_tokens(400);
  long_request.set_ignore_eos(true);
  auto ctx = Context(120);
  auto reader = workers_["w-a"].stub->Generate(ctx.get(), long_request);
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_start());
  EXPECT_EQ(msg.start().strategy_version(), 0u);

  const v1::Rollout created = Create(v1, {100});
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));
  ASSERT_EQ(VersionOf("w-a"), v1);

  // A new request takes the new version; the old one is still pinnable; an unknown one is not.
  v1::GenerateRequest small;
  small.set_text("Once upon a time");
  small.set_max_tokens(2);
  for (std::optional<uint64_t> pin : {std::optional<uint64_t>(), std::optional<uint64_t>(0)}) {
    if (pin) small.set_strategy_version(*pin);
    auto c = Context();
    auto r = workers_["w-a"].stub->Generate(c.get(), small);
    v1::GenerateResponse m;
    ASSERT_TRUE(r->Read(&m));
    EXPECT_EQ(m.start().strategy_version(), pin ? *pin : v1);
    while (r->Read(&m)) {
    }
    EXPECT_TRUE(r->Finish().ok());
  }
  small.set_strategy_version(7);
  auto c = Context();
  auto refused = workers_["w-a"].stub->Generate(c.get(), small);
  while (refused->Read(&msg)) {
  }
  const grpc::Status st = refused->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("strategy_version 7 is not held"));

  int tokens = 0;
  v1::GenerateEnd end;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) tokens += msg.chunk().token_ids_size();
    if (msg.has_end()) end = msg.end();
  }
  const grpc::Status done = reader->Finish();
  EXPECT_TRUE(done.ok()) << done.error_message();
  EXPECT_EQ(tokens, 400);
  EXPECT_EQ(end.finish_reason(), v1::FINISH_REASON_LENGTH);
}

}  // namespace
}  // namespace kvshare
