#include "tests/support/etcd_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace kvshare::testing {

int FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string EtcdProcess::Binary() {
  if (const char* env = std::getenv("KVSHARE_ETCD"); env != nullptr && *env != '\0') {
    return ::access(env, X_OK) == 0 ? env : "";
  }
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "/usr/bin" : path, ':')) {
    const std::string candidate = absl::StrFormat("%s/etcd", dir);
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

namespace {

// Two distinct free loopback ports (the kernel may hand the same one out twice in a row).
std::pair<int, int> TwoFreePorts() {
  const int client = FreeLoopbackPort();
  int peer = FreeLoopbackPort();
  while (peer == client) peer = FreeLoopbackPort();
  return {client, peer};
}

// The last `max_bytes` of the file at `path` ("" when it cannot be read).
std::string Tail(const std::string& path, size_t max_bytes = 600) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > max_bytes ? text.substr(text.size() - max_bytes) : text;
}

// The free ports are free when picked, not when etcd binds them: a test running beside this one
// may take one in between. Such a start is tried again on fresh ports, this many times in all.
constexpr int kStartAttempts = 5;

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(const std::string& name,
                                                                absl::Duration ready_within) {
  std::unique_ptr<EtcdProcess> p(new EtcdProcess());
  p->binary_ = Binary();
  if (p->binary_.empty()) {
    return absl::NotFoundError(
        "no etcd binary (install Debian's etcd-server, or set KVSHARE_ETCD)");
  }
  const char* tmp = std::getenv("TEST_TMPDIR");
  p->dir_ = absl::StrFormat("%s/etcd.%s.%d", tmp != nullptr ? tmp : "/tmp", name, getpid());
  absl::Status s;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    std::filesystem::remove_all(p->dir_);
    std::filesystem::create_directories(p->dir_);
    std::tie(p->client_port_, p->peer_port_) = TwoFreePorts();
    s = p->Launch(ready_within);
    if (s.ok() || !p->LostAPortRace()) break;
  }
  if (!s.ok()) return s;
  return p;
}

bool EtcdProcess::LostAPortRace() const {
  return pid_ <= 0 &&
         absl::StrContains(Tail(dir_ + "/etcd.log", 1 << 16), "address already in use");
}

EtcdProcess::~EtcdProcess() {
  Kill();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string EtcdProcess::endpoint() const { return absl::StrFormat("127.0.0.1:%d", client_port_); }

void EtcdProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

absl::Status EtcdProcess::Restart(absl::Duration ready_within) {
  Kill();
  return Launch(ready_within);
}

absl::Status EtcdProcess::Launch(absl::Duration ready_within) {
  absl::Status s = Spawn();
  if (!s.ok()) return s;
  return WaitHealthy(ready_within);
}

absl::Status EtcdProcess::Spawn() {
  const std::string client = absl::StrFormat("http://127.0.0.1:%d", client_port_);
  const std::string peer = absl::StrFormat("http://127.0.0.1:%d", peer_port_);
  std::vector<std::string> args = {
      binary_,
      "--name=" + member_,
      "--data-dir=" + dir_ + "/data",
      "--listen-client-urls=" + client,
      "--advertise-client-urls=" + client,
      "--listen-peer-urls=" + peer,
      "--initial-advertise-peer-urls=" + peer,
      "--initial-cluster=" + (initial_cluster_.empty() ? member_ + "=" + peer : initial_cluster_),
      "--log-level=warn"};
  if (!initial_cluster_.empty()) {
    args.push_back("--initial-cluster-token=" + cluster_token_);
    // Loopback: elections in a tenth of the default time, so a lost member's leadership moves
    // quickly (the defaults are for real networks).
    args.push_back("--heartbeat-interval=50");
    args.push_back("--election-timeout=500");
  }
  const std::string log = dir_ + "/etcd.log";
  pid_ = ::fork();
  if (pid_ < 0) return absl::InternalError("fork failed");
  if (pid_ == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return absl::OkStatus();
}

absl::Status EtcdProcess::WaitHealthy(absl::Duration ready_within) {
  const std::string log = dir_ + "/etcd.log";
  const absl::Time deadline = absl::Now() + ready_within;
  while (absl::Now() < deadline) {
    // Alive after answering: an etcd beside this one, holding a port this one was given, can
    // answer /health before this one exits on the port.
    const bool healthy = Healthy();
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrFormat("etcd exited at start; %s ends with: %s", log, Tail(log)));
    }
    if (healthy) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrFormat("etcd on %s not healthy within %s; see %s",
                                                     endpoint(), absl::FormatDuration(ready_within),
                                                     log));
}

absl::StatusOr<std::vector<std::unique_ptr<EtcdProcess>>> EtcdProcess::StartCluster(
    const std::string& name, int members, absl::Duration ready_within) {
  if (members < 1) return absl::InvalidArgumentError("members must be at least 1");
  if (Binary().empty()) {
    return absl::NotFoundError(
        "no etcd binary (install Debian's etcd-server, or set KVSHARE_ETCD)");
  }
  absl::Status s;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    std::vector<std::unique_ptr<EtcdProcess>> out;
    s = TryStartCluster(name, members, ready_within, &out);
    if (s.ok()) return out;
    bool lost_a_race = false;
    for (const auto& p : out) lost_a_race = lost_a_race || p->LostAPortRace();
    if (!lost_a_race) break;
  }
  return s;
}

absl::Status EtcdProcess::TryStartCluster(const std::string& name, int members,
                                          absl::Duration ready_within,
                                          std::vector<std::unique_ptr<EtcdProcess>>* out) {
  std::vector<std::string> cluster;
  std::set<int> ports;
  const auto fresh_port = [&ports] {
    int port = FreeLoopbackPort();
    while (!ports.insert(port).second) port = FreeLoopbackPort();
    return port;
  };
  const char* tmp = std::getenv("TEST_TMPDIR");
  for (int i = 0; i < members; ++i) {
    std::unique_ptr<EtcdProcess> p(new EtcdProcess());
    p->binary_ = Binary();
    p->member_ = absl::StrFormat("m%d", i);
    p->cluster_token_ = absl::StrFormat("%s.%d", name, getpid());  // the same for every member
    p->dir_ = absl::StrFormat("%s/etcd.%s.%d.%s", tmp != nullptr ? tmp : "/tmp", name, getpid(),
                              p->member_);
    std::filesystem::remove_all(p->dir_);
    std::filesystem::create_directories(p->dir_);
    p->client_port_ = fresh_port();
    p->peer_port_ = fresh_port();
    cluster.push_back(absl::StrFormat("%s=http://127.0.0.1:%d", p->member_, p->peer_port_));
    out->push_back(std::move(p));
  }
  for (auto& p : *out) {
    p->initial_cluster_ = absl::StrJoin(cluster, ",");
    absl::Status s = p->Spawn();
    if (!s.ok()) return s;
  }
  for (auto& p : *out) {
    absl::Status s = p->WaitHealthy(ready_within);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string EtcdProcess::ClusterUrl(const std::vector<std::unique_ptr<EtcdProcess>>& members,
                                    const std::string& prefix) {
  std::vector<std::string> endpoints;
  for (const auto& m : members) endpoints.push_back(m->endpoint());
  return "etcd://" + absl::StrJoin(endpoints, ",") + prefix;
}

bool EtcdProcess::Healthy() const {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(client_port_);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const char request[] = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, request, sizeof(request) - 1) == ssize_t(sizeof(request) - 1)) {
      char buf[1024];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof(buf))) > 0) answer.append(buf, size_t(n));
    }
  }
  ::close(fd);
  return absl::StrContains(answer, "\"health\":\"true\"");
}

}  // namespace kvshare::testing
