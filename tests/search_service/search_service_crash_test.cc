// The real kvshare-search binary killed and restarted on the same data directory:
//   - SIGKILL while many clients publish: every version a client was told about is still
//     there with the same content, versions stay dense, nothing half-written is shown;
//   - SIGKILL while a job runs (and another waits): after restart both are FAILED with the
//     reason, never lost or stuck RUNNING;
//   - SIGTERM: the drain ends the job that outlives the grace as FAILED with the reason, and
//     the process exits 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/util/file.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "kvshare/v1/search.grpc.pb.h"
#include "proto/wire/strategy_wire.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::unique_ptr<grpc::ClientContext> Context(int seconds = 30) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return context;
}

// One run of the kvshare-search binary on a data directory.
class ServerProcess {
 public:
  ServerProcess(const std::string& dir, std::vector<std::string> extra_args)
      : dir_(dir), extra_args_(std::move(extra_args)) {}
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Starts it and waits for its port file.
  void Start() {
    const std::string port_file = dir_ + "/port";
    fs::remove(port_file);
    std::vector<std::string> args = {KVSHARE_SEARCH_BINARY,
                                     "--data-dir",
                                     dir_ + "/data",
                                     "--catalog",
                                     dir_ + "/catalog.json",
                                     "--port",
                                     "0",
                                     "--port-file",
                                     port_file,
                                     "--metrics-port",
                                     "0",
                                     "--host",
                                     "127.0.0.1"};
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = dir_ + "/server.log";
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {  // the child: only async-signal-safe calls until exec
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!fs::exists(port_file)) {
      int status = 0;
      ASSERT_EQ(::waitpid(pid_, &status, WNOHANG), 0) << "kvshare-search exited early; log:\n"
                                                      << testing::ReadFileOrDie(log);
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no port file";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    port_ = std::stoi(testing::ReadFileOrDie(port_file));
  }

  void Signal(int signal) { ::kill(pid_, signal); }
  // The wait status; fails the test when it takes longer than `seconds`.
  int Wait(int seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "kvshare-search did not exit within " << seconds << " s";
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return status;
  }

  std::shared_ptr<grpc::Channel> Channel(int client = 0) const {
    grpc::ChannelArguments args;
    args.SetInt("kvshare.test.client", client);
    return grpc::CreateCustomChannel(absl::StrFormat("127.0.0.1:%d", port_),
                                     grpc::InsecureChannelCredentials(), args);
  }

 private:
  const std::string dir_;
  const std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
  int port_ = 0;
};

class SearchServiceCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrFormat("%s/search_service_crash_test.%d.%s", ::testing::TempDir(), getpid(),
                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ + "/catalog.json") << absl::StrFormat(
        R"({"models": [{"name": "smollm2", "path": "%s", "format": "gguf"},
                       {"name": "stories260K", "path": "%s", "tokenizer": "%s"}],
            "calibration_corpora": [{"name": "tinystories", "path": "%s"}]})",
        testing::SmolLm2Path(), testing::Asset("stories260K.bin"), testing::Asset("tok512.bin"),
        testing::Asset("tinystories-sample.txt"));
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  // A SmolLM2 search that never accepts (threshold 1) and so scores all 435 pairs: it runs
  // for many seconds, long enough to be caught running.
  static v1::CreateSearchJobRequest LongJob() {
    v1::CreateSearchJobRequest r;
    r.set_model("smollm2");
    r.set_calibration_corpus("tinystories");
    r.set_samples(8);
    r.set_tokens(64);
    r.set_target_layers(8);
    r.set_threshold(1.0);
    return r;
  }

  static void WaitUntilScoring(v1::SearchService::Stub& stub, const std::string& job_id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    v1::GetSearchJobRequest get;
    get.set_job_id(job_id);
    for (;;) {
      v1::SearchJob job;
      ASSERT_TRUE(stub.GetSearchJob(Context().get(), get, &job).ok());
      ASSERT_NE(job.state(), v1::SEARCH_JOB_SUCCEEDED);
      if (job.state() == v1::SEARCH_JOB_RUNNING && job.progress().pairs_tried() >= 1) return;
      ASSERT_LT(std::chrono::steady_clock::now(), deadline);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  static v1::SearchJob Get(v1::SearchService::Stub& stub, const std::string& job_id) {
    v1::GetSearchJobRequest get;
    get.set_job_id(job_id);
    v1::SearchJob job;
    grpc::Status s = stub.GetSearchJob(Context().get(), get, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  std::string dir_;
};

// Distinct strategies of a 30-layer model: number k shares the k-th pair (i, j).
v1::SharingStrategy NthStrategy(int k) {
  v1::SharingStrategy s;
  s.set_model_fingerprint(std::string(64, 'd'));
  for (int l = 0; l < 30; ++l) s.add_kv_source(l);
  for (int i = 1; i < 30; ++i) {
    for (int j = 0; j < i; ++j) {
      if (k-- == 0) s.set_kv_source(i, j);
    }
  }
  return s;
}

TEST_F(SearchServiceCrashTest, SigkillDuringPublishesLosesNoVersionAndShowsNoHalfWrittenOne) {
  constexpr int kRounds = 3, kClients = 4, kAcksBeforeKill = 20, kMaxStrategies = 400;
  std::map<std::string, uint64_t> acked;  // strategy id -> the version its client was told
  std::mutex mu;
  std::atomic<int> next{0};
  std::mt19937 rng(7);
  auto server = std::make_unique<ServerProcess>(dir_, std::vector<std::string>{});
  server->Start();
  for (int round = 0; round < kRounds; ++round) {
    std::atomic<int> acks{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        auto stub = v1::StrategyRegistry::NewStub(server->Channel(round * 10 + c));
        for (;;) {
          const int k = next.fetch_add(1);
          if (k >= kMaxStrategies) return;
          v1::PublishStrategyRequest request;
          *request.mutable_strategy() = NthStrategy(k);
          v1::PublishStrategyResponse response;
          grpc::Status s = stub->PublishStrategy(Context(10).get(), request, &response);
          if (!s.ok()) return;  // the server is gone
          std::lock_guard<std::mutex> lock(mu);
          auto [it, inserted] =
              acked.emplace(response.record().strategy().id(), response.record().version());
          EXPECT_TRUE(inserted) << "strategy " << k << " published twice";
          ++acks;
        }
      });
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (acks < kAcksBeforeKill && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Somewhere in the middle of a publish (they follow each other back to back).
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 5000));
    server->Signal(SIGKILL);
    EXPECT_TRUE(WIFSIGNALED(server->Wait(10)));
    for (auto& c : clients) c.join();
    ASSERT_GE(acks.load(), kAcksBeforeKill);

    server = std::make_unique<ServerProcess>(dir_, std::vector<std::string>{});
    server->Start();
    auto stub = v1::StrategyRegistry::NewStub(server->Channel(1000 + round));
    v1::ListStrategiesRequest list;
    list.set_model(std::string(64, 'd'));
    v1::ListStrategiesResponse all;
    ASSERT_TRUE(stub->ListStrategies(Context().get(), list, &all).ok());
    std::map<std::string, uint64_t> listed;
    for (int i = 0; i < all.records_size(); ++i) {
      const v1::StrategyRecord& r = all.records(i);
      EXPECT_EQ(r.version(), uint64_t(i + 1)) << "versions are not dense";
      auto strategy = FromProto(r.strategy());  // whole and valid: its id matches its content
      EXPECT_TRUE(strategy.ok()) << "version " << r.version() << ": " << strategy.status();
      listed[r.strategy().id()] = r.version();
    }
    EXPECT_GE(listed.size(), acked.size());
    EXPECT_LE(listed.size(), acked.size() + kClients);  // at most the publishes cut short
    for (const auto& [id, version] : acked) {
      auto it = listed.find(id);
      ASSERT_NE(it, listed.end()) << "acknowledged version " << version << " was lost";
      EXPECT_EQ(it->second, version);
    }
    // What was in flight and made it is now acknowledged too (a retry would be told so).
    std::lock_guard<std::mutex> lock(mu);
    acked = listed;
  }
  // No temporary survives the restart.
  for (const auto& entry : fs::recursive_directory_iterator(dir_ + "/data")) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  }
  server->Signal(SIGTERM);
  const int status = server->Wait(30);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(SearchServiceCrashTest, JobsCutOffBySigkillAreReportedFailedAfterRestart) {
  auto server = std::make_unique<ServerProcess>(
      dir_, std::vector<std::string>{"--max-concurrent-jobs", "1", "--search-threads", "1"});
  server->Start();
  auto stub = v1::SearchService::NewStub(server->Channel());
  v1::CreateSearchJobRequest running_request = LongJob();
  running_request.set_idempotency_key("long-one");
  v1::SearchJob running, queued;
  ASSERT_TRUE(stub->CreateSearchJob(Context(120).get(), running_request, &running).ok());
  v1::CreateSearchJobRequest small;
  small.set_model("stories260K");
  small.set_calibration_corpus("tinystories");
  small.set_target_layers(1);
  ASSERT_TRUE(stub->CreateSearchJob(Context(120).get(), small, &queued).ok());
  WaitUntilScoring(*stub, running.job_id());
  EXPECT_EQ(Get(*stub, queued.job_id()).state(), v1::SEARCH_JOB_QUEUED);
  server->Signal(SIGKILL);
  server->Wait(10);

  server = std::make_unique<ServerProcess>(dir_, std::vector<std::string>{});
  server->Start();
  stub = v1::SearchService::NewStub(server->Channel(1));
  const v1::SearchJob was_running = Get(*stub, running.job_id());
  EXPECT_EQ(was_running.state(), v1::SEARCH_JOB_FAILED);
  EXPECT_EQ(was_running.error_code(), int(grpc::StatusCode::ABORTED));
  EXPECT_THAT(was_running.error(), HasSubstr("stopped while this job was running"));
  const v1::SearchJob was_queued = Get(*stub, queued.job_id());
  EXPECT_EQ(was_queued.state(), v1::SEARCH_JOB_FAILED);
  EXPECT_THAT(was_queued.error(), HasSubstr("stopped while this job was queued"));
  // The idempotency key outlives the process: the retry gets the (failed) first job.
  v1::SearchJob retried;
  ASSERT_TRUE(stub->CreateSearchJob(Context(120).get(), running_request, &retried).ok());
  EXPECT_EQ(retried.job_id(), running.job_id());
  EXPECT_EQ(retried.state(), v1::SEARCH_JOB_FAILED);
  // New jobs get new ids.
  v1::SearchJob fresh;
  ASSERT_TRUE(stub->CreateSearchJob(Context(120).get(), small, &fresh).ok());
  EXPECT_NE(fresh.job_id(), running.job_id());
  EXPECT_NE(fresh.job_id(), queued.job_id());
}

TEST_F(SearchServiceCrashTest, SigtermDrainsAndAJobOutlivingTheGraceEndsFailedWithTheReason) {
  auto server = std::make_unique<ServerProcess>(
      dir_, std::vector<std::string>{"--drain-grace", "0.2", "--search-threads", "1"});
  server->Start();
  auto stub = v1::SearchService::NewStub(server->Channel());
  v1::SearchJob job;
  ASSERT_TRUE(stub->CreateSearchJob(Context(120).get(), LongJob(), &job).ok());
  WaitUntilScoring(*stub, job.job_id());
  server->Signal(SIGTERM);
  const int status = server->Wait(30);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_THAT(testing::ReadFileOrDie(dir_ + "/server.log"), HasSubstr("drain_done clean=false"));

  server = std::make_unique<ServerProcess>(dir_, std::vector<std::string>{});
  server->Start();
  stub = v1::SearchService::NewStub(server->Channel(1));
  const v1::SearchJob after = Get(*stub, job.job_id());
  EXPECT_EQ(after.state(), v1::SEARCH_JOB_FAILED);
  EXPECT_EQ(after.error_code(), int(grpc::StatusCode::UNAVAILABLE));
  EXPECT_THAT(after.error(), HasSubstr("shut down (drain grace of 200ms ran out)"));
}

}  // namespace
}  // namespace kvshare
