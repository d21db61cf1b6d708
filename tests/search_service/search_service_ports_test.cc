// The real kvshare-search binary and its ports: a second service on the same explicit --port
// or --metrics-port exits non-zero naming the port (gRPC's and httplib's SO_REUSEPORT would
// have let it share the port, two registries behind one address); junk sent to /metrics and
// 200 half-open connections leave it answering.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/inference/grpc_probe.h"
#include "tests/support/http_probe.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;

// A free TCP port on loopback (bound, read, released).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// One kvshare-search process; killed at destruction if still running.
class SearchProcess {
 public:
  SearchProcess(const std::string& dir, const std::string& name, std::vector<std::string> args)
      : log_(dir + "/" + name + ".log"), port_file_(dir + "/" + name + ".port") {
    std::vector<std::string> argv_s = {
        KVSHARE_SEARCH_BINARY, "--data-dir", dir + "/" + name + "-data", "--host", "127.0.0.1",
        "--port-file",         port_file_};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (std::string& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~SearchProcess() {
    if (pid_ > 0 && code_ == -2) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // The gRPC port once listening; 0 if it exits first or after 60 s.
  int WaitForPort() {
    const absl::Time end = absl::Now() + absl::Seconds(60);
    while (absl::Now() < end && Exited(absl::ZeroDuration()) == -2) {
      std::ifstream in(port_file_);
      int port = 0;
      if (in >> port && port > 0) return port;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return 0;
  }
  // The exit status once it exits within `timeout`; -2 while it runs.
  int Exited(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    do {
      int status = 0;
      if (code_ == -2 && waitpid(pid_, &status, WNOHANG) == pid_) {
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (code_ != -2) return code_;
      absl::SleepFor(absl::Milliseconds(20));
    } while (absl::Now() < end);
    return code_;
  }
  void Signal(int sig) { kill(pid_, sig); }
  std::string Log() const { return testing::ReadFileOrDie(log_); }

 private:
  const std::string log_, port_file_;
  pid_t pid_ = -1;
  int code_ = -2;
};

class SearchServicePortsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/search_service_ports_test.", getpid(), ".",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(SearchServicePortsTest, ASecondServiceOnABusyPortExitsNamingIt) {
  const int metrics_port = FreePort();
  SearchProcess first(dir_, "first",
                      {"--port", "0", "--metrics-port", std::to_string(metrics_port)});
  const int port = first.WaitForPort();
  ASSERT_GT(port, 0) << first.Log();

  SearchProcess same_port(dir_, "second", {"--port", std::to_string(port), "--metrics-port", "0"});
  const int code = same_port.Exited(absl::Seconds(60));
  EXPECT_NE(code, -2) << "a second service on busy port " << port << " kept running:\n"
                      << same_port.Log();
  EXPECT_NE(code, 0);
  EXPECT_NE(same_port.Log().find(absl::StrCat("127.0.0.1:", port)), std::string::npos)
      << same_port.Log();

  SearchProcess same_metrics(dir_, "third",
                             {"--port", "0", "--metrics-port", std::to_string(metrics_port)});
  const int metrics_code = same_metrics.Exited(absl::Seconds(60));
  EXPECT_NE(metrics_code, -2) << "kept running on busy metrics port:\n" << same_metrics.Log();
  EXPECT_NE(metrics_code, 0);
  EXPECT_NE(same_metrics.Log().find(absl::StrCat("--metrics-port ", metrics_port)),
            std::string::npos)
      << same_metrics.Log();

  // The first still owns both.
  EXPECT_EQ(first.Exited(absl::ZeroDuration()), -2);
  EXPECT_EQ(testing::HttpStatus(testing::HttpGet(metrics_port, "/metrics")), 200);
}

TEST_F(SearchServicePortsTest, MetricsJunkNeverTakesTheServiceDown) {
  const int metrics_port = FreePort();
  SearchProcess service(dir_, "service",
                        {"--port", "0", "--metrics-port", std::to_string(metrics_port)});
  const int port = service.WaitForPort();
  ASSERT_GT(port, 0) << service.Log();
  for (const auto& [name, request] : testing::MetricsJunkRequests()) {
    const std::string r = testing::HttpExchange(metrics_port, request, absl::Seconds(15));
    const int status = testing::HttpStatus(r);
    EXPECT_TRUE(r.empty() || (status >= 200 && status < 600)) << name << ":\n" << r;
    ASSERT_EQ(service.Exited(absl::ZeroDuration()), -2) << "died on " << name << ":\n"
                                                        << service.Log();
  }
  {
    testing::HalfOpenConnections idle(metrics_port, 200);
    EXPECT_EQ(idle.opened(), 200);
    // A hang guard, not a speed target (see the worker's test).
    const std::string page = testing::HttpGet(metrics_port, "/metrics", absl::Seconds(4));
    EXPECT_EQ(testing::HttpStatus(page), 200) << page;
  }
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto health = testing::CheckHealth(channel, "");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, testing::HealthStatus::kServing);
  service.Signal(SIGTERM);
  EXPECT_EQ(service.Exited(absl::Seconds(30)), 0) << service.Log();
}

TEST_F(SearchServicePortsTest, AMisspeltLogLevelIsRefusedAndVersionNamesTheBuild) {
  SearchProcess bad(dir_, "bad", {"--port", "0", "--metrics-port", "0", "--log-level", "inof"});
  EXPECT_NE(bad.Exited(absl::Seconds(30)), 0) << bad.Log();
  EXPECT_NE(bad.Log().find("inof not in {trace,debug,info,warn,error,critical,off}"),
            std::string::npos)
      << bad.Log();
  SearchProcess version(dir_, "version", {"--version"});
  EXPECT_EQ(version.Exited(absl::Seconds(30)), 0) << version.Log();
  EXPECT_EQ(
      version.Log().rfind(absl::StrCat("kvshare-search ", KVSHARE_PROJECT_VERSION, " (commit "), 0),
      0u)
      << version.Log();
}

}  // namespace
}  // namespace kvshare
