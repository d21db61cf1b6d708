#include "tests/support/replica_fleet.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpcpp/generic/generic_stub.h"
#include "tests/support/fleet_worker_args.h"
#include "tests/support/test_env.h"

namespace kvshare::testing {

namespace fs = std::filesystem;

bool WaitFor(const std::function<bool()>& condition, absl::Duration within) {
  const absl::Time end = absl::Now() + within;
  while (absl::Now() < end) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

std::unique_ptr<grpc::ClientContext> ClientContext(absl::Duration deadline) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
  return context;
}

void ChildProcess::Start() {
  std::vector<char*> argv;
  for (std::string& a : args_) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_ = ::fork();
  if (pid_ == 0) {
    const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
}

void ChildProcess::Signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGCONT);
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

bool ChildProcess::Running() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }

std::string ChildProcess::Log() const {
  std::ifstream in(log_);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

SearchReplica::SearchReplica(std::string binary, std::string dir, std::string store,
                             int leader_ttl_s, std::vector<std::string> extra, int port)
    : binary_(std::move(binary)),
      dir_(std::move(dir)),
      store_(std::move(store)),
      leader_ttl_s_(leader_ttl_s),
      extra_(std::move(extra)),
      fixed_port_(port) {}

bool SearchReplica::Start() {
  fs::create_directories(dir_);
  const std::string port_file = dir_ + "/port";
  fs::remove(port_file);
  std::vector<std::string> args = {binary_,
                                   "--data-dir",
                                   dir_ + "/data",
                                   "--store",
                                   store_,
                                   "--port",
                                   std::to_string(fixed_port_),
                                   "--port-file",
                                   port_file,
                                   "--metrics-port",
                                   "0",
                                   "--host",
                                   "127.0.0.1",
                                   "--leader-ttl",
                                   std::to_string(leader_ttl_s_)};
  args.insert(args.end(), extra_.begin(), extra_.end());
  process_ = std::make_unique<ChildProcess>(args, dir_ + "/server.log");
  process_->Start();
  if (!WaitFor([&] { return fs::exists(port_file) && fs::file_size(port_file) > 0; },
               absl::Seconds(60))) {
    return false;
  }
  port_ = std::stoi(ReadFileOrDie(port_file));
  channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
  registry_ = v1::StrategyRegistry::NewStub(channel_);
  rollouts_ = v1::Rollouts::NewStub(channel_);
  jobs_ = v1::SearchService::NewStub(channel_);
  return true;
}

std::string SearchReplica::Log() const {
  std::ifstream in(dir_ + "/server.log");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string SearchReplica::address() const { return absl::StrFormat("127.0.0.1:%d", port_); }

int SearchReplica::Health() {
  grpc::GenericStub stub(channel_);
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return -1;
  grpc::Slice out;
  if (!response.DumpToSingleSlice(&out).ok() || out.size() != 2) return -1;
  return out.begin()[1];
}

WorkerProcess::WorkerProcess(std::string binary, std::string dir, std::string id,
                             std::string control_plane)
    : binary_(std::move(binary)),
      dir_(std::move(dir)),
      id_(std::move(id)),
      control_plane_(std::move(control_plane)) {}

bool WorkerProcess::Start() {
  fs::create_directories(dir_);
  const std::string port_file = absl::StrFormat("%s/worker-%s.port", dir_, id_);
  fs::remove(port_file);
  process_ = std::make_unique<ChildProcess>(
      FleetWorkerArgs(binary_, Asset("stories260K.bin"), port_file, control_plane_, id_),
      absl::StrFormat("%s/worker-%s.log", dir_, id_));
  process_->Start();
  if (!WaitFor([&] { return fs::exists(port_file) && fs::file_size(port_file) > 0; },
               absl::Seconds(60))) {
    return false;
  }
  stub_ = v1::InferenceService::NewStub(
      grpc::CreateChannel(absl::StrFormat("127.0.0.1:%d", std::stoi(ReadFileOrDie(port_file))),
                          grpc::InsecureChannelCredentials()));
  return WaitFor([&] { return Version() >= 0; }, absl::Seconds(60));
}

int64_t WorkerProcess::Version() {
  v1::GetLoadResponse load;
  if (!stub_->GetLoad(ClientContext(absl::Seconds(5)).get(), v1::GetLoadRequest(), &load).ok()) {
    return -1;
  }
  return int64_t(load.strategy_version());
}

GenerateLoad::GenerateLoad(std::vector<WorkerProcess*> workers) {
  for (WorkerProcess* w : workers) {
    threads_.emplace_back([this, w] {
      v1::GenerateRequest request;
      request.set_text("Once upon a time");
      request.set_max_tokens(8);
      while (!stop_.load()) {
        auto context = ClientContext(absl::Seconds(30));
        auto reader = w->stub().Generate(context.get(), request);
        v1::GenerateResponse message;
        while (reader->Read(&message)) {
        }
        const grpc::Status s = reader->Finish();
        if (s.ok()) {
          ++ok_;
        } else {
          ++failed_;
          std::lock_guard<std::mutex> lock(mu_);
          if (errors_.size() < 10) {
            errors_.push_back(
                absl::StrFormat("%s: %d %s", w->id(), s.error_code(), s.error_message()));
          }
        }
      }
    });
  }
}

void GenerateLoad::Stop() {
  stop_ = true;
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

std::vector<std::string> GenerateLoad::errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return errors_;
}

}  // namespace kvshare::testing
