// EtcdJobMirror against a real etcd (started by the test on loopback; skipped with the reason
// when there is no etcd binary): no job record before its replica's key, the newest sequence
// wins, and the leader's sweep fails exactly the queued and running jobs of replicas whose
// lease is gone — once, and never a live replica's or a finished job.
#include "search_service/server/etcd_job_mirror.h"

#include <atomic>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/support/etcd_process.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

v1::SearchJob Job(const std::string& id, v1::SearchJobState state) {
  v1::SearchJob job;
  job.set_job_id(id);
  job.set_state(state);
  return job;
}

class EtcdJobMirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::EtcdProcess::Binary().empty()) {
      GTEST_SKIP() << "no etcd binary (Debian etcd-server; scripts/setup.sh installs it)";
    }
    auto etcd = testing::EtcdProcess::Start(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    client_ = std::make_shared<EtcdClient>(std::vector<std::string>{etcd_->endpoint()});
  }
  // A mirror for replica `id` holding a fresh lease of 60 s (its id in *lease).
  std::unique_ptr<EtcdJobMirror> Mirror(const std::string& id, int64_t* lease) {
    auto granted = client_->GrantLease(absl::Seconds(60));
    EXPECT_TRUE(granted.ok()) << granted.status();
    *lease = *granted;
    auto m = std::make_unique<EtcdJobMirror>(client_, EtcdJobMirrorOptions{"/p"});
    m->SetReplica(id, [l = *lease] { return l; }, {});
    return m;
  }
  // The stored record of `key` (state UNSPECIFIED when absent).
  v1::SearchJob Stored(const std::string& key) {
    v1::SearchJob job;
    auto r = client_->Get(key);
    if (r.ok() && !r->kvs.empty()) {
      EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(r->kvs[0].value, &job).ok());
    }
    return job;
  }

  std::unique_ptr<testing::EtcdProcess> etcd_;
  std::shared_ptr<EtcdClient> client_;
};

TEST_F(EtcdJobMirrorTest, NoJobRecordBeforeTheReplicaKeyAndTheNewestSequenceWins) {
  std::atomic<int64_t> lease{0};
  EtcdJobMirror mirror(client_, EtcdJobMirrorOptions{"/p"});
  mirror.Record(Job("job-000001", v1::SEARCH_JOB_QUEUED), 1);  // before SetReplica
  mirror.SetReplica("host-a:50061/pid7", [&] { return lease.load(); }, {});
  EXPECT_FALSE(mirror.WaitUntilFlushed(absl::Milliseconds(300)));  // no lease yet
  auto none = client_->GetPrefix("/p/");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->kvs.empty());

  mirror.Record(Job("job-000001", v1::SEARCH_JOB_RUNNING), 3);
  mirror.Record(Job("job-000001", v1::SEARCH_JOB_QUEUED), 2);  // older: ignored
  auto granted = client_->GrantLease(absl::Seconds(60));
  ASSERT_TRUE(granted.ok());
  lease = *granted;
  ASSERT_TRUE(mirror.WaitUntilFlushed(absl::Seconds(10)));
  EXPECT_EQ(mirror.replica_key(), "/p/replicas/host-a:50061_pid7");
  EXPECT_EQ(mirror.job_key("job-000001"), "/p/jobs/host-a:50061_pid7/job-000001");
  auto replica = client_->Get(mirror.replica_key());
  ASSERT_TRUE(replica.ok());
  ASSERT_EQ(replica->kvs.size(), 1u);
  EXPECT_EQ(replica->kvs[0].value, "host-a:50061/pid7");
  EXPECT_EQ(replica->kvs[0].lease, *granted);
  EXPECT_EQ(Stored(mirror.job_key("job-000001")).state(), v1::SEARCH_JOB_RUNNING);
}

TEST_F(EtcdJobMirrorTest, TheSweepFailsOnlyTheUnfinishedJobsOfAReplicaWhoseLeaseExpired) {
  int64_t lease_a = 0, lease_b = 0, lease_leader = 0;
  auto a = Mirror("host-a:1/pid1", &lease_a);
  auto b = Mirror("host-b:2/pid2", &lease_b);
  auto leader = Mirror("host-l:3/pid3", &lease_leader);
  a->Record(Job("job-000001", v1::SEARCH_JOB_RUNNING), 2);
  a->Record(Job("job-000002", v1::SEARCH_JOB_QUEUED), 1);
  a->Record(Job("job-000003", v1::SEARCH_JOB_SUCCEEDED), 4);
  b->Record(Job("job-000001", v1::SEARCH_JOB_RUNNING), 2);  // the same id on another replica
  ASSERT_TRUE(a->WaitUntilFlushed(absl::Seconds(10)));
  ASSERT_TRUE(b->WaitUntilFlushed(absl::Seconds(10)));

  auto failed = leader->FailOrphans();
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_TRUE(failed->empty());  // every owner alive

  const std::string key1 = a->job_key("job-000001"), key2 = a->job_key("job-000002"),
                    key3 = a->job_key("job-000003"), key_b = b->job_key("job-000001");
  a.reset();                                        // stops writing; its lease still holds its key
  ASSERT_TRUE(client_->RevokeLease(lease_a).ok());  // as if it had expired
  failed = leader->FailOrphans();
  ASSERT_TRUE(failed.ok()) << failed.status();
  ASSERT_EQ(failed->size(), 2u);
  const v1::SearchJob running = Stored(key1), queued = Stored(key2);
  for (const v1::SearchJob& job : {running, queued}) {
    EXPECT_EQ(job.state(), v1::SEARCH_JOB_FAILED);
    EXPECT_EQ(job.error_code(), int(absl::StatusCode::kAborted));
    EXPECT_THAT(job.error(), HasSubstr("replica host-a:1_pid1 that held this job died"));
    EXPECT_THAT(job.error(), HasSubstr("found by the leader host-l:3/pid3"));
    EXPECT_GT(job.end_time().seconds(), 0);
  }
  EXPECT_THAT(running.error(), HasSubstr("while it was running"));
  EXPECT_THAT(queued.error(), HasSubstr("while it was queued"));
  EXPECT_EQ(Stored(key3).state(), v1::SEARCH_JOB_SUCCEEDED);
  EXPECT_EQ(Stored(key_b).state(), v1::SEARCH_JOB_RUNNING);  // b is alive

  failed = leader->FailOrphans();  // once only
  ASSERT_TRUE(failed.ok());
  EXPECT_TRUE(failed->empty());
  auto all = leader->ReadAll();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->at("host-a:1_pid1").size(), 3u);
  EXPECT_EQ(all->at("host-b:2_pid2").size(), 1u);
}

}  // namespace
}  // namespace kvshare
