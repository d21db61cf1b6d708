// The fleet tests' fixture: a kvshare-search process and kvshare-worker processes
// (stories260K) on loopback, with stubs to the registry, the rollouts API and each worker.
// Shared by fleet_rollout_test.cc and quality_gate_fleet_test.cc.
#pragma once

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
#include "tests/support/fleet_worker_args.h"
#include "tests/support/test_env.h"

namespace kvshare::fleet_testing {

namespace fs = std::filesystem;

constexpr int kDeadlineSeconds = 90;

inline int FreePort() {
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
inline bool WaitFor(const std::function<bool()>& condition, int seconds = kDeadlineSeconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

inline std::unique_ptr<grpc::ClientContext> Context(int seconds = 30) {
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
    std::vector<std::string> args = testing::FleetWorkerArgs(
        KVSHARE_WORKER_BINARY, model.empty() ? testing::Asset("stories260K.bin") : model,
        w.port_file, absl::StrFormat("127.0.0.1:%d", search_port_), id);
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
    return Publish(*s);
  }
  uint64_t Publish(const SharingStrategy& s) {
    v1::PublishStrategyRequest req;
    ToProto(s, req.mutable_strategy());
    req.set_model_name("stories260K");
    v1::PublishStrategyResponse resp;
    grpc::Status st = registry_->PublishStrategy(Context().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.record().version();
  }

  // A rollout the quality gate lets through whatever the target's quality (the strategies
  // Publish makes record none; quality_gate_fleet_test.cc tests the gate).
  v1::Rollout Create(uint64_t target, std::vector<uint32_t> steps,
                     const std::string& selector = "") {
    v1::Rollout r;
    grpc::Status st = TryCreate(target, std::move(steps), selector, true, &r);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return r;
  }
  grpc::Status TryCreate(uint64_t target, std::vector<uint32_t> steps, const std::string& selector,
                         bool allow_quality_regression, v1::Rollout* out) {
    v1::CreateRolloutRequest req;
    req.set_model(fingerprint_);
    req.set_target_version(target);
    for (uint32_t s : steps) req.add_steps(s);
    req.set_label_selector(selector);
    req.set_allow_quality_regression(allow_quality_regression);
    return rollouts_->CreateRollout(Context().get(), req, out);
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

}  // namespace kvshare::fleet_testing
