// Several kvshare-search processes on one etcd (--store etcd://...), all real processes on
// loopback (etcd started by the test; skipped with the reason when there is no etcd binary):
//   - two replicas publishing at once: every strategy gets one version, the versions are
//     1..N with no gap, and both replicas list the same records;
//   - SIGKILL of the leader mid-rollout: another replica takes the lead within the lease TTL
//     plus a poll, resumes the rollout from etcd and can drive it;
//   - SIGKILL of etcd: replicas say NOT_SERVING on health and refuse writes with UNAVAILABLE
//     while still answering registry reads; SERVING and writable again once etcd is back.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "search_service/server/etcd_client.h"
#include "tests/support/etcd_process.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kLeaderTtlSeconds = 2;

std::unique_ptr<grpc::ClientContext> Context(int seconds = 10) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return context;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration within) {
  const absl::Time end = absl::Now() + within;
  while (absl::Now() < end) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

v1::SharingStrategy NthStrategy(int k) {
  v1::SharingStrategy s;
  s.set_model_fingerprint(std::string(64, 'e'));
  for (int l = 0; l < 30; ++l) s.add_kv_source(l);
  for (int i = 1; i < 30; ++i) {
    for (int j = 0; j < i; ++j) {
      if (k-- == 0) s.set_kv_source(i, j);
    }
  }
  return s;
}

// One kvshare-search replica on the shared etcd.
class Replica {
 public:
  Replica(std::string dir, std::string store) : dir_(std::move(dir)), store_(std::move(store)) {}
  ~Replica() { Kill(); }

  void Start() {
    fs::create_directories(dir_);
    const std::string port_file = dir_ + "/port";
    fs::remove(port_file);
    std::vector<std::string> args = {KVSHARE_SEARCH_BINARY,
                                     "--data-dir",
                                     dir_ + "/data",
                                     "--store",
                                     store_,
                                     "--port",
                                     "0",
                                     "--port-file",
                                     port_file,
                                     "--metrics-port",
                                     "0",
                                     "--host",
                                     "127.0.0.1",
                                     "--leader-ttl",
                                     std::to_string(kLeaderTtlSeconds)};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = dir_ + "/server.log";
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ASSERT_TRUE(WaitFor([&] { return fs::exists(port_file) && fs::file_size(port_file) > 0; },
                        absl::Seconds(60)))
        << Log();
    port_ = std::stoi(testing::ReadFileOrDie(port_file));
    channel_ = grpc::CreateChannel(absl::StrFormat("127.0.0.1:%d", port_),
                                   grpc::InsecureChannelCredentials());
    registry_ = v1::StrategyRegistry::NewStub(channel_);
    rollouts_ = v1::Rollouts::NewStub(channel_);
  }
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::string Log() const {
    std::ifstream in(dir_ + "/server.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  int port() const { return port_; }
  v1::StrategyRegistry::Stub& registry() { return *registry_; }
  v1::Rollouts::Stub& rollouts() { return *rollouts_; }

  // grpc.health.v1.Health/Check of the whole server: 1 SERVING, 2 NOT_SERVING, -1 no answer.
  int Health() {
    grpc::GenericStub stub(channel_);
    grpc::ByteBuffer request, response;
    grpc::Slice empty("");
    request = grpc::ByteBuffer(&empty, 1);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                   &response, [&](grpc::Status s) {
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

  grpc::Status Publish(int k, v1::PublishStrategyResponse* out) {
    v1::PublishStrategyRequest request;
    *request.mutable_strategy() = NthStrategy(k);
    request.set_model_name("replicated");
    return registry_->PublishStrategy(Context().get(), request, out);
  }

 private:
  const std::string dir_, store_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StrategyRegistry::Stub> registry_;
  std::unique_ptr<v1::Rollouts::Stub> rollouts_;
};

class SearchReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::EtcdProcess::Binary().empty()) {
      GTEST_SKIP() << "no etcd binary (Debian etcd-server; scripts/setup.sh installs it)";
    }
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = absl::StrFormat("%s/search_replicas_test.%d.%s", ::testing::TempDir(), getpid(), name_);
    fs::remove_all(dir_);
    auto etcd = testing::EtcdProcess::Start(name_);
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    for (const char* r : {"a", "b"}) {
      replicas_.push_back(std::make_unique<Replica>(dir_ + "/" + r, etcd_->url("/kvshare")));
      replicas_.back()->Start();
    }
  }
  void TearDown() override {
    replicas_.clear();
    if (!HasFailure()) fs::remove_all(dir_);
  }
  // The replica whose port the leader key names, or -1.
  int LeaderIndex() {
    EtcdClient client({etcd_->endpoint()});
    auto r = client.Get("/kvshare/leader");
    if (!r.ok() || r->kvs.empty()) return -1;
    for (size_t i = 0; i < replicas_.size(); ++i) {
      if (absl::StrContains(r->kvs[0].value, absl::StrFormat(":%d/", replicas_[i]->port()))) {
        return int(i);
      }
    }
    return -1;
  }

  std::string name_, dir_;
  std::unique_ptr<testing::EtcdProcess> etcd_;
  std::vector<std::unique_ptr<Replica>> replicas_;
};

TEST_F(SearchReplicasTest, TwoReplicasPublishingAtOnceGiveEveryStrategyOneVersionWithNoGap) {
  constexpr int kDistinct = 16;
  std::mutex mu;
  std::map<std::string, std::set<uint64_t>> versions_of;
  std::vector<std::thread> threads;
  // Two clients per replica, each publishing every strategy in its own order.
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Replica& r = *replicas_[t % 2];
      for (int i = 0; i < kDistinct; ++i) {
        const int k = (t < 2) ? i : kDistinct - 1 - i;
        v1::PublishStrategyResponse out;
        grpc::Status s = r.Publish((k + t * 5) % kDistinct, &out);
        ASSERT_TRUE(s.ok()) << s.error_message();
        std::lock_guard<std::mutex> lock(mu);
        versions_of[out.record().strategy().id()].insert(out.record().version());
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(versions_of.size(), size_t(kDistinct));
  std::set<uint64_t> all;
  for (const auto& [id, vs] : versions_of) {
    EXPECT_EQ(vs.size(), 1u) << id << " got versions " << *vs.begin() << " and " << *vs.rbegin();
    all.insert(vs.begin(), vs.end());
  }
  EXPECT_EQ(all.size(), size_t(kDistinct));
  EXPECT_EQ(*all.begin(), 1u);
  EXPECT_EQ(*all.rbegin(), uint64_t(kDistinct));
  for (auto& r : replicas_) {
    EXPECT_TRUE(WaitFor(
        [&] {
          v1::ListStrategiesResponse list;
          v1::ListStrategiesRequest request;
          request.set_include_deprecated(true);
          return r->registry().ListStrategies(Context().get(), request, &list).ok() &&
                 list.records_size() == kDistinct;
        },
        absl::Seconds(10)));
  }
}

TEST_F(SearchReplicasTest, KillingTheLeaderMidRolloutHandsItToAnotherReplicaWithinTheTtl) {
  ASSERT_TRUE(WaitFor([&] { return LeaderIndex() >= 0; }, absl::Seconds(20)));
  const int leader = LeaderIndex();
  Replica& old_leader = *replicas_[leader];
  Replica& other = *replicas_[1 - leader];
  v1::PublishStrategyResponse out;
  for (int k = 0; k < 2; ++k) ASSERT_TRUE(old_leader.Publish(k, &out).ok());
  v1::CreateRolloutRequest create;
  create.set_model(std::string(64, 'e'));
  create.set_target_version(2);
  create.add_steps(50);
  create.add_steps(100);
  create.set_allow_quality_regression(true);  // its strategies record no quality
  v1::Rollout rollout;
  grpc::Status s = old_leader.rollouts().CreateRollout(Context().get(), create, &rollout);
  ASSERT_TRUE(s.ok()) << s.error_message();

  const absl::Time killed = absl::Now();
  old_leader.Kill();
  ASSERT_TRUE(
      WaitFor([&] { return LeaderIndex() == 1 - leader; }, absl::Seconds(kLeaderTtlSeconds + 10)))
      << other.Log();
  const absl::Duration takeover = absl::Now() - killed;
  std::printf("[ measured ] leader takeover after SIGKILL: %.2f s (lease TTL %d s)\n",
              absl::ToDoubleSeconds(takeover), kLeaderTtlSeconds);
  // Within the TTL, plus the new leader's campaign poll and a margin for a loaded machine.
  EXPECT_LT(takeover, absl::Seconds(kLeaderTtlSeconds + 3));
  EXPECT_TRUE(WaitFor([&] { return absl::StrContains(other.Log(), "rollouts_resumed active=1"); },
                      absl::Seconds(5)))
      << other.Log();
  // The new leader drives the same rollout.
  v1::RolloutRef ref;
  ref.set_rollout_id(rollout.rollout_id());
  v1::Rollout promoted;
  s = other.rollouts().PromoteRollout(Context().get(), ref, &promoted);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(promoted.current_step(), 1u);
  EXPECT_EQ(promoted.target_version(), 2u);
}

TEST_F(SearchReplicasTest, WhileEtcdIsDownReplicasAreNotServingAndRefuseWritesThenResume) {
  v1::PublishStrategyResponse out;
  ASSERT_TRUE(replicas_[0]->Publish(0, &out).ok());
  for (auto& r : replicas_)
    ASSERT_TRUE(WaitFor([&] { return r->Health() == 1; }, absl::Seconds(10)));

  etcd_->Kill();
  for (auto& r : replicas_) {
    EXPECT_TRUE(WaitFor([&] { return r->Health() == 2; }, absl::Seconds(10))) << r->Log();
  }
  grpc::Status refused = replicas_[1]->Publish(1, &out);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr(etcd_->endpoint()));
  // Reads of what is known go on.
  v1::GetStrategyRequest get;
  get.set_strategy_id(out.record().strategy().id());
  v1::StrategyRecord record;
  EXPECT_TRUE(replicas_[1]->registry().GetStrategy(Context().get(), get, &record).ok());

  ASSERT_TRUE(etcd_->Restart().ok());
  for (auto& r : replicas_) {
    EXPECT_TRUE(WaitFor([&] { return r->Health() == 1; }, absl::Seconds(15))) << r->Log();
  }
  grpc::Status after = replicas_[1]->Publish(1, &out);
  ASSERT_TRUE(after.ok()) << after.error_message();
  EXPECT_EQ(out.record().version(), 2u);
}

}  // namespace
}  // namespace kvshare
