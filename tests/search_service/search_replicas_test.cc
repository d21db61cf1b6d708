// Several kvshare-search processes on one etcd (--store etcd://...), all real processes on
// loopback (etcd started by the test; skipped with the reason when there is no etcd binary):
//   - two replicas publishing at once: every strategy gets one version, the versions are
//     1..N with no gap, and both replicas list the same records;
//   - SIGKILL of the leader mid-rollout: another replica takes the lead within the lease TTL
//     plus a poll, resumes the rollout from etcd and can drive it;
//   - SIGKILL of etcd: replicas say NOT_SERVING on health and refuse writes (publishes and
//     rollout commands) with UNAVAILABLE while still answering registry reads; SERVING and
//     writable again once etcd is back;
//   - a follower refuses rollout and pin commands with FAILED_PRECONDITION naming the leader's
//     address, and still answers reads;
//   - the search jobs of a SIGKILLed replica (one running, one queued) are marked FAILED on
//     etcd by the leader once the dead replica's lease expires, never silently lost.
// Workers under Generate load through these failures: tests/fleet/replica_failover_test.cc.
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
#include "tests/support/replica_fleet.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::WaitFor;

constexpr int kLeaderTtlSeconds = 2;

std::unique_ptr<grpc::ClientContext> Context(int seconds = 10) {
  return testing::ClientContext(absl::Seconds(seconds));
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

grpc::Status Publish(testing::SearchReplica& r, int k, v1::PublishStrategyResponse* out) {
  v1::PublishStrategyRequest request;
  *request.mutable_strategy() = NthStrategy(k);
  request.set_model_name("replicated");
  return r.registry().PublishStrategy(Context().get(), request, out);
}

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
    for (const char* r : {"a", "b"}) StartReplica(r);
  }
  testing::SearchReplica& StartReplica(const std::string& name,
                                       std::vector<std::string> extra = {}) {
    replicas_.push_back(std::make_unique<testing::SearchReplica>(
        KVSHARE_SEARCH_BINARY, dir_ + "/" + name, etcd_->url("/kvshare"), kLeaderTtlSeconds,
        std::move(extra)));
    EXPECT_TRUE(replicas_.back()->Start()) << replicas_.back()->Log();
    return *replicas_.back();
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
  std::vector<std::unique_ptr<testing::SearchReplica>> replicas_;
};

TEST_F(SearchReplicasTest, TwoReplicasPublishingAtOnceGiveEveryStrategyOneVersionWithNoGap) {
  constexpr int kDistinct = 16;
  std::mutex mu;
  std::map<std::string, std::set<uint64_t>> versions_of;
  std::vector<std::thread> threads;
  // Two clients per replica, each publishing every strategy in its own order.
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      testing::SearchReplica& r = *replicas_[t % 2];
      for (int i = 0; i < kDistinct; ++i) {
        const int k = (t < 2) ? i : kDistinct - 1 - i;
        v1::PublishStrategyResponse out;
        grpc::Status s = Publish(r, (k + t * 5) % kDistinct, &out);
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
  testing::SearchReplica& old_leader = *replicas_[leader];
  testing::SearchReplica& other = *replicas_[1 - leader];
  v1::PublishStrategyResponse out;
  for (int k = 0; k < 2; ++k) ASSERT_TRUE(Publish(old_leader, k, &out).ok());
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
  ASSERT_TRUE(Publish(*replicas_[0], 0, &out).ok());
  for (auto& r : replicas_)
    ASSERT_TRUE(WaitFor([&] { return r->Health() == 1; }, absl::Seconds(10)));

  etcd_->Kill();
  for (auto& r : replicas_) {
    EXPECT_TRUE(WaitFor([&] { return r->Health() == 2; }, absl::Seconds(10))) << r->Log();
  }
  grpc::Status refused = Publish(*replicas_[1], 1, &out);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr(etcd_->endpoint()));
  v1::CreateRolloutRequest create;
  create.set_allow_quality_regression(true);  // the test's strategies record no quality
  create.set_model(std::string(64, 'e'));
  create.set_target_version(1);
  create.add_steps(100);
  for (auto& r : replicas_) {
    v1::Rollout rollout;
    grpc::Status s = r->rollouts().CreateRollout(Context().get(), create, &rollout);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  }
  // Reads of what is known go on.
  v1::GetStrategyRequest get;
  get.set_strategy_id(out.record().strategy().id());
  v1::StrategyRecord record;
  EXPECT_TRUE(replicas_[1]->registry().GetStrategy(Context().get(), get, &record).ok());

  ASSERT_TRUE(etcd_->Restart().ok());
  for (auto& r : replicas_) {
    EXPECT_TRUE(WaitFor([&] { return r->Health() == 1; }, absl::Seconds(15))) << r->Log();
  }
  grpc::Status after = Publish(*replicas_[1], 1, &out);
  ASSERT_TRUE(after.ok()) << after.error_message();
  EXPECT_EQ(out.record().version(), 2u);
}

// "<hostname>:<port>": a replica's default advertised address.
std::string AdvertisedAddress(int port) {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return absl::StrFormat("%s:%d", host, port);
}

TEST_F(SearchReplicasTest, AFollowerRefusesRolloutAndPinCommandsNamingTheLeadersAddress) {
  ASSERT_TRUE(WaitFor([&] { return LeaderIndex() >= 0; }, absl::Seconds(20)));
  testing::SearchReplica& leader = *replicas_[LeaderIndex()];
  testing::SearchReplica& follower = *replicas_[1 - LeaderIndex()];
  v1::PublishStrategyResponse out;
  ASSERT_TRUE(Publish(follower, 0, &out).ok());  // publishing is any replica's

  v1::CreateRolloutRequest create;
  create.set_allow_quality_regression(true);  // the test's strategies record no quality
  create.set_model(std::string(64, 'e'));
  create.set_target_version(1);
  create.add_steps(50);
  create.add_steps(100);
  v1::Rollout rollout;
  grpc::Status s = follower.rollouts().CreateRollout(Context().get(), create, &rollout);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(),
              HasSubstr("CreateRollout: this replica (" + AdvertisedAddress(follower.port()) +
                        ") is not the leader; send it to the leader at " +
                        AdvertisedAddress(leader.port()) + " "));
  s = leader.rollouts().CreateRollout(Context().get(), create, &rollout);
  ASSERT_TRUE(s.ok()) << s.error_message();

  v1::RolloutRef ref;
  ref.set_rollout_id(rollout.rollout_id());
  v1::Rollout answer;
  using Command = grpc::Status (v1::Rollouts::Stub::*)(grpc::ClientContext*, const v1::RolloutRef&,
                                                       v1::Rollout*);
  for (Command call : {&v1::Rollouts::Stub::PauseRollout, &v1::Rollouts::Stub::PromoteRollout,
                       &v1::Rollouts::Stub::AbortRollout}) {
    s = (follower.rollouts().*call)(Context().get(), ref, &answer);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("leader at " + AdvertisedAddress(leader.port())));
  }
  v1::Pin pin;
  pin.set_model(std::string(64, 'e'));
  pin.set_version(1);
  pin.set_worker_id("w-1");
  v1::Pin pinned;
  s = follower.rollouts().SetPin(Context().get(), pin, &pinned);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("SetPin: this replica"));
  // Reads stay any replica's: the follower shows the leader's rollout, untouched by the
  // refused commands.
  EXPECT_TRUE(WaitFor(
      [&] {
        return follower.rollouts().GetRollout(Context().get(), ref, &answer).ok() &&
               answer.state() == rollout.state();
      },
      absl::Seconds(10)));
  EXPECT_EQ(answer.current_step(), rollout.current_step());
}

TEST_F(SearchReplicasTest, TheJobsOfAKilledReplicaAreFailedByTheLeaderNotLost) {
  ASSERT_TRUE(WaitFor([&] { return LeaderIndex() >= 0; }, absl::Seconds(20)));
  const std::string catalog = dir_ + "/catalog.json";
  std::ofstream(catalog) << absl::StrFormat(
      R"({"format": "kvshare.catalog.v1",
          "models": [{"name": "stories260K", "path": "%s", "format": "llama2c",
                      "tokenizer": "%s"},
                     {"name": "smollm2", "path": "%s", "format": "gguf"}],
          "calibration_corpora": [{"name": "tinystories", "path": "%s"}]})",
      testing::Asset("stories260K.bin"), testing::Asset("tok512.bin"), testing::SmolLm2Path(),
      testing::Asset("tinystories-sample.txt"));
  // A third replica (not the leader: one is elected already) with one search at a time.
  testing::SearchReplica& doomed = StartReplica(
      "c", {"--catalog", catalog, "--max-concurrent-jobs", "1", "--search-threads", "1"});
  v1::CreateSearchJobRequest running;  // SmolLM2, many seconds
  running.set_model("smollm2");
  running.set_calibration_corpus("tinystories");
  running.set_samples(8);
  running.set_tokens(64);
  running.set_target_layers(8);
  running.set_threshold(1.0);
  v1::CreateSearchJobRequest queued;
  queued.set_model("stories260K");
  queued.set_calibration_corpus("tinystories");
  queued.set_target_layers(1);
  v1::SearchJob a, b;
  ASSERT_TRUE(doomed.jobs().CreateSearchJob(Context(120).get(), running, &a).ok());
  ASSERT_TRUE(doomed.jobs().CreateSearchJob(Context(120).get(), queued, &b).ok());

  // Both are on etcd, unfinished, under the doomed replica's name.
  EtcdClient client({etcd_->endpoint()});
  const std::string owner_part = absl::StrFormat(":%d_pid", doomed.port());
  auto records = [&] {
    std::map<std::string, std::string> out;  // job id -> JSON
    auto r = client.GetPrefix("/kvshare/jobs/");
    if (!r.ok()) return out;
    for (const EtcdKeyValue& kv : r->kvs) {
      if (absl::StrContains(kv.key, owner_part))
        out[kv.key.substr(kv.key.rfind('/') + 1)] = kv.value;
    }
    return out;
  };
  ASSERT_TRUE(WaitFor([&] { return records().size() == 2; }, absl::Seconds(10))) << doomed.Log();
  ASSERT_TRUE(
      WaitFor([&] { return absl::StrContains(records()[a.job_id()], "SEARCH_JOB_RUNNING"); },
              absl::Seconds(30)))
      << doomed.Log();
  EXPECT_THAT(records()[b.job_id()], HasSubstr("SEARCH_JOB_QUEUED"));

  const absl::Time killed = absl::Now();
  doomed.Kill();
  // Its lease expires (TTL), then the leader's next sweep (every second) fails both.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto now = records();
        for (const auto& [id, json] : now) {
          if (!absl::StrContains(json, "SEARCH_JOB_FAILED")) return false;
        }
        return now.size() == 2;
      },
      absl::Seconds(kLeaderTtlSeconds + 10)))
      << replicas_[LeaderIndex()]->Log();
  std::printf("[ measured ] jobs of a SIGKILLed replica failed by the leader after %.2f s\n",
              absl::ToDoubleSeconds(absl::Now() - killed));
  for (const auto& [id, json] : records()) {
    EXPECT_THAT(json, HasSubstr("died while it was"));
    EXPECT_THAT(json, HasSubstr("\"error_code\":10"));  // ABORTED
  }
  EXPECT_THAT(records()[a.job_id()], HasSubstr("while it was running"));
  EXPECT_THAT(records()[b.job_id()], HasSubstr("while it was queued"));
  EXPECT_THAT(replicas_[LeaderIndex()]->Log(), HasSubstr("event=orphaned_job_failed"));
}

}  // namespace
}  // namespace kvshare
