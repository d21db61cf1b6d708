// The kvshare-worker binary as operators run it (spawned as a subprocess): it reports health
// once ready, serves /metrics (and survives junk sent to it), refuses to start on a busy port
// naming it, and on SIGTERM drains — new requests are refused, a stream in
// flight runs to its end — and exits 0; a stream longer than --drain-grace is cut with finish
// CANCELLED and status UNAVAILABLE, and the process still exits 0.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "tests/inference/grpc_probe.h"
#include "tests/support/http_probe.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

// A free TCP port on loopback (bound, read, released).
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

// GET http://127.0.0.1:port/path, the whole response ("" on failure).
std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
  close(fd);
  return out;
}

class WorkerProcess {
 public:
  explicit WorkerProcess(std::vector<std::string> extra_args) {
    const std::string dir = ::testing::TempDir();
    const std::string tag = absl::StrCat(getpid(), "-", counter_++);
    port_file_ = absl::StrCat(dir, "/kvshare-worker-", tag, ".port");
    log_file_ = absl::StrCat(dir, "/kvshare-worker-", tag, ".log");
    std::remove(port_file_.c_str());
    metrics_port_ = FreePort();
    std::vector<std::string> args = {KVSHARE_WORKER_BINARY,
                                     "--model",
                                     testing::SmolLm2Path(),
                                     "--threads",
                                     "2",
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     "0",
                                     "--port-file",
                                     port_file_,
                                     "--metrics-port",
                                     std::to_string(metrics_port_),
                                     "--kv-budget-mib",
                                     "64"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    pid_ = fork();
    if (pid_ == 0) {
      FILE* log = std::fopen(log_file_.c_str(), "w");
      if (log != nullptr) dup2(fileno(log), 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~WorkerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (::testing::Test::HasFailure()) {
      std::ifstream in(log_file_);
      std::stringstream ss;
      ss << in.rdbuf();
      std::fprintf(stderr, "--- kvshare-worker log ---\n%s--- end ---\n", ss.str().c_str());
    }
  }

  // The gRPC port once the worker listens (0 after 30 s).
  int WaitForPort() {
    const absl::Time end = absl::Now() + absl::Seconds(30);
    while (absl::Now() < end) {
      std::ifstream in(port_file_);
      int port = 0;
      if (in >> port && port > 0) return port;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return 0;
  }
  // Connects and waits until health says SERVING.
  bool WaitUntilServing() {
    const int port = WaitForPort();
    if (port == 0) return false;
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    stub_ = v1::InferenceService::NewStub(channel_);
    const absl::Time end = absl::Now() + absl::Seconds(60);
    while (absl::Now() < end) {
      auto health = testing::CheckHealth(channel_, "");
      if (health.ok() && *health == testing::HealthStatus::kServing) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
  // The exit status, or -1 when it does not exit within `timeout`.
  int WaitForExit(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return -1;
  }
  void Signal(int sig) { kill(pid_, sig); }

  v1::InferenceService::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() { return channel_; }
  int metrics_port() const { return metrics_port_; }

 private:
  static inline int counter_ = 0;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string port_file_, log_file_;
  int metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::InferenceService::Stub> stub_;
};

v1::GenerateRequest Story(int max_tokens) {
  v1::GenerateRequest r;
  r.set_text("Once upon a time, in a land far away, there lived a");
  r.set_max_tokens(max_tokens);
  return r;
}

struct StreamResult {
  int tokens = 0;
  bool got_end = false;
  v1::GenerateEnd end;
  grpc::Status status;
};

// Reads the rest of a stream.
StreamResult Finish(grpc::ClientReader<v1::GenerateResponse>& reader, int tokens_so_far) {
  StreamResult r;
  r.tokens = tokens_so_far;
  v1::GenerateResponse msg;
  while (reader.Read(&msg)) {
    if (msg.has_chunk()) r.tokens += msg.chunk().token_ids_size();
    if (msg.has_end()) {
      r.got_end = true;
      r.end = msg.end();
    }
  }
  r.status = reader.Finish();
  return r;
}

// Reads up to and including the first token chunk; the number of tokens read.
int ReadFirstToken(grpc::ClientReader<v1::GenerateResponse>& reader) {
  v1::GenerateResponse msg;
  while (reader.Read(&msg)) {
    if (msg.has_chunk()) return msg.chunk().token_ids_size();
  }
  return 0;
}

TEST(WorkerProcessTest, SigtermDrainsWithoutCuttingAStreamAndExitsZero) {
  WorkerProcess worker({"--drain-grace", "60"});
  ASSERT_TRUE(worker.WaitUntilServing());
  grpc::ClientContext ctx;
  auto reader = worker.stub().Generate(&ctx, Story(40));
  const int first = ReadFirstToken(*reader);
  ASSERT_GT(first, 0);

  worker.Signal(SIGTERM);
  // Draining: health goes NOT_SERVING and a new request is refused.
  bool not_serving = false;
  for (int i = 0; i < 200 && !not_serving; ++i) {
    auto health = testing::CheckHealth(worker.channel(), "");
    not_serving = health.ok() && *health == testing::HealthStatus::kNotServing;
    if (!not_serving) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(not_serving);
  {
    grpc::ClientContext late_ctx;
    auto late = worker.stub().Generate(&late_ctx, Story(4));
    const StreamResult refused = Finish(*late, 0);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(refused.tokens, 0);
  }

  // The stream in flight is not cut.
  const StreamResult done = Finish(*reader, first);
  EXPECT_TRUE(done.status.ok()) << done.status.error_message();
  ASSERT_TRUE(done.got_end);
  EXPECT_NE(done.end.finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(done.tokens, done.end.usage().completion_tokens());
  if (done.end.finish_reason() == v1::FINISH_REASON_LENGTH) {
    EXPECT_EQ(done.tokens, 40);
  }
  EXPECT_EQ(worker.WaitForExit(absl::Seconds(30)), 0);
}

TEST(WorkerProcessTest, DrainGraceCutsALongStreamWithCancelledAndStillExitsZero) {
  WorkerProcess worker({"--drain-grace", "0.3"});
  ASSERT_TRUE(worker.WaitUntilServing());
  grpc::ClientContext ctx;
  auto reader = worker.stub().Generate(&ctx, Story(1000));
  const int first = ReadFirstToken(*reader);
  ASSERT_GT(first, 0);
  const absl::Time t0 = absl::Now();
  worker.Signal(SIGTERM);
  const StreamResult cut = Finish(*reader, first);
  EXPECT_EQ(cut.status.error_code(), grpc::StatusCode::UNAVAILABLE) << cut.status.error_message();
  ASSERT_TRUE(cut.got_end);
  EXPECT_EQ(cut.end.finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(cut.tokens, cut.end.usage().completion_tokens());
  EXPECT_LT(cut.tokens, 1000);
  EXPECT_EQ(worker.WaitForExit(absl::Seconds(30)), 0);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(20));
}

TEST(WorkerProcessTest, MetricsEndpointServesPrometheusText) {
  WorkerProcess worker({});
  ASSERT_TRUE(worker.WaitUntilServing());
  grpc::ClientContext ctx;
  auto reader = worker.stub().Generate(&ctx, Story(4));
  const StreamResult done = Finish(*reader, 0);
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  const std::string page = HttpGet(worker.metrics_port(), "/metrics");
  EXPECT_NE(page.find("200 OK"), std::string::npos) << page;
  for (const char* metric :
       {"kvshare_requests_total{result=\"length\"} 1", "kvshare_generated_tokens_total 4",
        "kvshare_strategy_version 1", "kvshare_time_to_first_token_seconds_count 1",
        "kvshare_inter_token_latency_seconds_count 3", "kvshare_kv_blocks{state=\"total\"}",
        "kvshare_queue_depth 0"}) {
    EXPECT_NE(page.find(metric), std::string::npos) << metric;
  }
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.WaitForExit(absl::Seconds(30)), 0);
}

TEST(WorkerProcessTest, MetricsIncludeRequestLatenciesKvUsageAndBuildAndModelInfo) {
  WorkerProcess worker({});
  ASSERT_TRUE(worker.WaitUntilServing());
  grpc::ClientContext ctx;
  auto reader = worker.stub().Generate(&ctx, Story(3));
  ASSERT_TRUE(Finish(*reader, 0).status.ok());
  // The client sees the last token before the scheduler's step that frees the sequence's blocks
  // ends: read until the gauge has dropped (or 10 s, and the check below says what it saw).
  std::string page;
  for (int i = 0; i < 200; ++i) {
    page = HttpGet(worker.metrics_port(), "/metrics");
    if (page.find("kvshare_kv_cache_usage_ratio 0\n") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  for (const std::string& metric :
       {std::string("kvshare_e2e_request_latency_seconds_count 1"),
        std::string("kvshare_request_queue_time_seconds_count 1"),
        std::string("kvshare_kv_cache_usage_ratio 0\n"),  // nothing running: no block in use
        std::string("kvshare_build_info{commit=\"")}) {
    EXPECT_NE(page.find(metric), std::string::npos) << metric << "\n" << page;
  }
  EXPECT_NE(page.find(absl::StrCat("version=\"", KVSHARE_PROJECT_VERSION, "\"} 1")),
            std::string::npos)
      << page;
  EXPECT_NE(page.find("kvshare_model_info{"), std::string::npos) << page;
  EXPECT_NE(page.find("model=\"SmolLM2-135M-Instruct.Q4_1\"} 1"), std::string::npos) << page;
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.WaitForExit(absl::Seconds(30)), 0);
}

// Runs kvshare-worker with `args` until it exits (at most `timeout`): the exit status (-1 if
// it had to be killed) and what it printed and logged (stdout and stderr).
std::pair<int, std::string> RunToExit(const std::string& binary, std::vector<std::string> args,
                                      absl::Duration timeout) {
  static int runs = 0;
  const std::string log =
      absl::StrCat(::testing::TempDir(), "/kvshare-run-", getpid(), "-", runs++, ".log");
  args.insert(args.begin(), binary);
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    if (f != nullptr) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int code = -1;
  const absl::Time end = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (absl::Now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return {code, ss.str()};
}

std::pair<int, std::string> RunWorkerToExit(std::vector<std::string> args, absl::Duration timeout) {
  return RunToExit(KVSHARE_WORKER_BINARY, std::move(args), timeout);
}

TEST(WorkerProcessTest, MetricsJunkNeverTakesTheWorkerDown) {
  WorkerProcess worker({});
  ASSERT_TRUE(worker.WaitUntilServing());
  const int port = worker.metrics_port();
  for (const auto& [name, request] : testing::MetricsJunkRequests()) {
    const std::string r = testing::HttpExchange(port, request, absl::Seconds(15));
    const int status = testing::HttpStatus(r);
    EXPECT_TRUE(r.empty() || (status >= 200 && status < 600)) << name << ":\n" << r;
    EXPECT_EQ(worker.WaitForExit(absl::Milliseconds(5)), -1) << "the worker died on " << name;
  }
  EXPECT_EQ(
      testing::HttpStatus(testing::HttpExchange(port, testing::MetricsJunkRequests()[1].second)),
      200);  // HEAD /metrics
  {
    testing::HalfOpenConnections idle(port, 200);
    EXPECT_EQ(idle.opened(), 200);
    // A hang guard, not a speed target: queued behind 200 idle connections that each wait
    // 5 s, the scrape would take far longer than this.
    const std::string page = testing::HttpGet(port, "/metrics", absl::Seconds(4));
    EXPECT_EQ(testing::HttpStatus(page), 200) << page;
    EXPECT_NE(page.find("kvshare_queue_depth"), std::string::npos);
  }
  auto health = testing::CheckHealth(worker.channel(), "");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, testing::HealthStatus::kServing);
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.WaitForExit(absl::Seconds(30)), 0);
}

TEST(WorkerProcessTest, ASecondWorkerOnABusyPortExitsNamingIt) {
  WorkerProcess first({});
  const int port = first.WaitForPort();
  ASSERT_GT(port, 0);
  const std::vector<std::string> common = {
      "--model",   testing::SmolLm2Path(), "--threads", "1", "--host",
      "127.0.0.1", "--kv-budget-mib",      "16"};
  {
    std::vector<std::string> args = common;
    args.insert(args.end(), {"--port", std::to_string(port), "--metrics-port", "0"});
    const auto [code, log] = RunWorkerToExit(args, absl::Seconds(60));
    EXPECT_NE(code, 0) << log;
    EXPECT_NE(code, -1) << "a worker on busy port " << port << " kept running:\n" << log;
    EXPECT_NE(log.find(absl::StrCat("127.0.0.1:", port)), std::string::npos) << log;
  }
  {
    std::vector<std::string> args = common;
    args.insert(args.end(),
                {"--port", "0", "--metrics-port", std::to_string(first.metrics_port())});
    const auto [code, log] = RunWorkerToExit(args, absl::Seconds(60));
    EXPECT_NE(code, 0) << log;
    EXPECT_NE(code, -1) << "a worker on busy metrics port kept running:\n" << log;
    EXPECT_NE(log.find(absl::StrCat("--metrics-port ", first.metrics_port())), std::string::npos)
        << log;
  }
  // The first one still owns both.
  EXPECT_EQ(testing::HttpStatus(testing::HttpGet(first.metrics_port(), "/metrics")), 200);
}

TEST(WorkerProcessTest, ABusyHttpPortFailsStartUpAtOnceNamingIt) {
  // Something else holds the port (no SO_REUSEPORT on either side).
  const int holder = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(holder, 4), 0);
  socklen_t len = sizeof(addr);
  getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  const absl::Time start = absl::Now();
  const auto [code, log] =
      RunWorkerToExit({"--model", testing::SmolLm2Path(), "--threads", "1", "--host", "127.0.0.1",
                       "--port", "0", "--metrics-port", "0", "--http-port", std::to_string(port)},
                      absl::Seconds(60));
  close(holder);
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, -1) << "a worker on busy HTTP port " << port << " kept running:\n" << log;
  EXPECT_NE(log.find(absl::StrCat("--http-port ", port)), std::string::npos) << log;
  EXPECT_NE(log.find(absl::StrCat("127.0.0.1:", port)), std::string::npos) << log;
  // Before the model loads: a hang guard, not a speed target.
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

TEST(WorkerProcessTest, AMisspeltLogLevelIsRefusedNamingTheLevels) {
  const auto [code, log] = RunWorkerToExit({"--log-level", "verbose"}, absl::Seconds(30));
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, -1) << log;
  EXPECT_NE(log.find("verbose"), std::string::npos) << log;
  EXPECT_NE(log.find("trace,debug,info,warn,error,critical,off"), std::string::npos) << log;
}

TEST(WorkerProcessTest, KvshareHealthExitsZeroOnlyWhileTheWorkerServes) {
  WorkerProcess worker({});
  ASSERT_TRUE(worker.WaitUntilServing());
  const std::string address = absl::StrCat("127.0.0.1:", worker.WaitForPort());
  const auto [serving, out] =
      RunToExit(KVSHARE_CLI_BINARY, {"health", "--server", address}, absl::Seconds(30));
  EXPECT_EQ(serving, 0) << out;
  EXPECT_EQ(out, "SERVING\n");
  const auto [unknown, unknown_out] =
      RunToExit(KVSHARE_CLI_BINARY, {"health", "--server", address, "--service", "no.such.Service"},
                absl::Seconds(30));
  EXPECT_EQ(unknown, 1) << unknown_out;
  EXPECT_EQ(unknown_out, "SERVICE_UNKNOWN\n");
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.WaitForExit(absl::Seconds(30)), 0);
  const auto [gone, gone_out] = RunToExit(
      KVSHARE_CLI_BINARY, {"health", "--server", address, "--timeout", "2"}, absl::Seconds(30));
  EXPECT_EQ(gone, 2) << gone_out;
  EXPECT_NE(gone_out.find(address), std::string::npos) << gone_out;
}

TEST(WorkerProcessTest, VersionPrintsTheProjectVersionAndCommit) {
  const auto [code, out] = RunWorkerToExit({"--version"}, absl::Seconds(30));
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(out.rfind(absl::StrCat("kvshare-worker ", KVSHARE_PROJECT_VERSION, " (commit "), 0), 0u)
      << out;
}

}  // namespace
}  // namespace kvshare
