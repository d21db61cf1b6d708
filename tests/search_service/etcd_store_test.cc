// The control plane on a real etcd (started by this binary on free loopback ports; skipped
// with the reason when there is no etcd binary): what the etcd stores promise beyond the
// StrategyStore contract (strategy_store_test.cc runs that on them) — two replicas on one
// prefix get distinct, dense versions and see each other's publishes; damage is refused
// naming the key; the fleet state is a compare-and-swap that a stale replica loses, a watch
// brings one replica's change to the other, and a lost state is DataLoss; an unreachable etcd
// is UNAVAILABLE naming the endpoint, and everything works again once etcd is back.
#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/server/etcd_client.h"
#include "search_service/server/etcd_fleet_state.h"
#include "search_service/server/etcd_strategy_store.h"
#include "search_service/server/rollout_controller.h"
#include "tests/support/etcd_process.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

constexpr int kLayers = 30;
std::string Fingerprint(char c) { return std::string(64, c); }

std::shared_ptr<const SharingStrategy> NthStrategy(int k, const std::string& fingerprint) {
  std::vector<int> kv_source(kLayers);
  for (int l = 0; l < kLayers; ++l) kv_source[l] = l;
  for (int i = 1; i < kLayers; ++i) {
    for (int j = 0; j < i; ++j) {
      if (k-- == 0) {
        kv_source[i] = j;
        auto s = SharingStrategy::Create(kv_source, fingerprint);
        EXPECT_TRUE(s.ok()) << s.status();
        return std::make_shared<const SharingStrategy>(std::move(*s));
      }
    }
  }
  return nullptr;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration within = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + within;
  while (absl::Now() < end) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

testing::EtcdProcess* SharedEtcd() {
  static const std::unique_ptr<testing::EtcdProcess> server = [] {
    auto p = testing::EtcdProcess::Start("etcd_store_test");
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }();
  return server.get();
}

class EtcdStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::EtcdProcess::Binary().empty()) {
      GTEST_SKIP() << "no etcd binary (Debian etcd-server; scripts/setup.sh installs it)";
    }
    ASSERT_NE(SharedEtcd(), nullptr);
    prefix_ =
        absl::StrFormat("/t/%s", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    client_ = std::make_shared<EtcdClient>(std::vector<std::string>{SharedEtcd()->endpoint()});
  }
  std::unique_ptr<EtcdStrategyStore> OpenStore() {
    auto store = EtcdStrategyStore::Open(client_, prefix_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }
  std::string prefix_;
  std::shared_ptr<EtcdClient> client_;
};

TEST(EtcdUrlTest, SplitsEndpointsAndPrefixAndNamesWhatIsWrong) {
  auto t = ParseEtcdUrl("etcd://10.0.0.1:2379,10.0.0.2:2379/kvshare/", "--store");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->endpoints, (std::vector<std::string>{"10.0.0.1:2379", "10.0.0.2:2379"}));
  EXPECT_EQ(t->prefix, "/kvshare");
  for (const char* bad : {"http://h:1/p", "etcd://h:1", "etcd://h:1/", "etcd://h/p", "etcd://h:0/p",
                          "etcd://h:1,/p"}) {
    auto r = ParseEtcdUrl(bad, "--store");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("--store")) << bad;
  }
}

TEST(EtcdClientTest, AnUnreachableEtcdIsUnavailableNamingTheKeyAndEndpoint) {
  const std::string endpoint = absl::StrFormat("127.0.0.1:%d", testing::FreeLoopbackPort());
  auto client = std::make_shared<EtcdClient>(std::vector<std::string>{endpoint});
  auto r = client->Get("/kvshare/some/key");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(endpoint));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("/kvshare/some/key"));
  auto store = EtcdStrategyStore::Open(client, "/kvshare");
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(EtcdStoreTest, TransactionsCompareThenWriteAndLeasesExpire) {
  auto first = client_->Txn({EtcdCompare::Absent(prefix_ + "/k")},
                            {EtcdOp::Put(prefix_ + "/k", "one")}, {EtcdOp::Get(prefix_ + "/k")});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->succeeded);
  auto second = client_->Txn({EtcdCompare::Absent(prefix_ + "/k")},
                             {EtcdOp::Put(prefix_ + "/k", "two")}, {EtcdOp::Get(prefix_ + "/k")});
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->succeeded);
  ASSERT_EQ(second->gets.size(), 1u);
  ASSERT_EQ(second->gets[0].kvs.size(), 1u);
  EXPECT_EQ(second->gets[0].kvs[0].value, "one");

  auto lease = client_->GrantLease(absl::Seconds(5));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(client_->Put(prefix_ + "/leased", "x", *lease).ok());
  auto ttl = client_->KeepAlive(*lease);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, absl::Seconds(5));
  ASSERT_TRUE(client_->RevokeLease(*lease).ok());
  EXPECT_EQ(client_->KeepAlive(*lease).status().code(), absl::StatusCode::kNotFound);
  auto gone = client_->Get(prefix_ + "/leased");
  ASSERT_TRUE(gone.ok());
  EXPECT_TRUE(gone->kvs.empty());  // a revoked lease takes its keys with it
}

TEST_F(EtcdStoreTest, TwoReplicasPublishingAtOnceGetDenseDistinctVersions) {
  auto a = OpenStore(), b = OpenStore();
  ASSERT_TRUE(a && b);
  const std::string fp = Fingerprint('a');
  constexpr int kDistinct = 24;
  // Replica A publishes 0..23, replica B publishes 23..0: every strategy from both.
  std::map<std::string, std::set<uint64_t>> versions_of;
  std::mutex mu;
  auto publish_all = [&](EtcdStrategyStore* store, bool reverse) {
    for (int i = 0; i < kDistinct; ++i) {
      const int k = reverse ? kDistinct - 1 - i : i;
      auto r = store->Publish(NthStrategy(k, fp), {});
      ASSERT_TRUE(r.ok()) << r.status();
      std::lock_guard<std::mutex> lock(mu);
      versions_of[r->record.strategy->id()].insert(r->record.version);
    }
  };
  std::thread ta(publish_all, a.get(), false), tb(publish_all, b.get(), true);
  ta.join();
  tb.join();
  ASSERT_EQ(versions_of.size(), size_t(kDistinct));
  std::set<uint64_t> all;
  for (const auto& [id, vs] : versions_of) {
    EXPECT_EQ(vs.size(), 1u) << id << " got two versions";
    all.insert(*vs.begin());
  }
  EXPECT_EQ(all.size(), size_t(kDistinct));
  EXPECT_EQ(*all.begin(), 1u);
  EXPECT_EQ(*all.rbegin(), uint64_t(kDistinct));
  // Both replicas' views converge on the same records; a third sees them from etcd alone.
  EXPECT_TRUE(WaitFor([&] { return a->List(fp).size() == kDistinct; }));
  EXPECT_TRUE(WaitFor([&] { return b->List(fp).size() == kDistinct; }));
  auto c = OpenStore();
  ASSERT_NE(c, nullptr);
  const auto la = a->List(fp), lc = c->List(fp);
  ASSERT_EQ(lc.size(), size_t(kDistinct));
  for (int i = 0; i < kDistinct; ++i) EXPECT_EQ(la[i].strategy->id(), lc[i].strategy->id());
}

TEST_F(EtcdStoreTest, AVersionPublishedOnOneReplicaIsReadableOnTheOtherAtOnce) {
  auto a = OpenStore(), b = OpenStore();
  ASSERT_TRUE(a && b);
  const std::string fp = Fingerprint('b');
  auto s = NthStrategy(3, fp);
  auto p = a->Publish(s, {"smollm2", "job-000009"});
  ASSERT_TRUE(p.ok()) << p.status();
  // No wait: a miss reads etcd.
  auto got = b->Get(fp, 1);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->strategy->id(), s->id());
  EXPECT_EQ(got->model_name, "smollm2");
  EXPECT_EQ(got->source_job_id, "job-000009");
  EXPECT_EQ(got->publish_time, p->record.publish_time);
  // Deprecations: the first reason wins, whichever replica asks.
  ASSERT_TRUE(b->Deprecate(fp, 1, "worse on held-out text").ok());
  auto again = a->Deprecate(fp, 1, "another reason");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->deprecation_reason, "worse on held-out text");
}

TEST_F(EtcdStoreTest, AStrategyWithProjectionsPublishedOnOneReplicaReadsBackOnTheOther) {
  auto a = OpenStore();
  ASSERT_TRUE(a);
  const std::string fp = Fingerprint('e');
  auto base = NthStrategy(0, fp);  // layer 1 shares layer 0
  std::vector<float> w(576 * 576);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 97) / 97.0f - 0.5f;
  auto proj = OutputProjections::FromF32(DType::kF16, 576, 576, {1}, {w});
  ASSERT_TRUE(proj.ok()) << proj.status();
  auto with = base->WithProjections(*proj);
  ASSERT_TRUE(with.ok()) << with.status();
  auto s = std::make_shared<const SharingStrategy>(std::move(*with));
  auto published = a->Publish(s, {"smollm2", ""});
  ASSERT_TRUE(published.ok()) << published.status().ToString();
  // SmolLM2's 663,552 bytes a layer are two etcd pieces, then the size key.
  auto pieces =
      client_->GetPrefix(absl::StrFormat("%s/projections/%s/", prefix_, (*proj)->sha256()));
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  EXPECT_EQ(pieces->kvs.size(), 3u);
  auto b = OpenStore();  // reads every record, and its blob, at Open
  ASSERT_TRUE(b);
  auto got = b->Get(fp, 1);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->strategy->id(), s->id());
  ASSERT_NE(got->strategy->projections(), nullptr);
  EXPECT_EQ(got->strategy->projections()->blob(), (*proj)->blob());
}

TEST_F(EtcdStoreTest, ADamagedRecordOrAGapIsRefusedNamingTheKey) {
  const std::string fp = Fingerprint('c');
  std::string second;
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(store->Publish(NthStrategy(k, fp), {}).ok());
    second = store->RecordKey(fp, 2);
  }
  auto text = client_->Get(second);
  ASSERT_TRUE(text.ok());
  ASSERT_EQ(text->kvs.size(), 1u);
  ASSERT_TRUE(client_->Put(second, text->kvs[0].value.substr(0, 40)).ok());
  auto damaged = EtcdStrategyStore::Open(client_, prefix_);
  EXPECT_EQ(damaged.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(damaged.status().message()), HasSubstr(second));

  ASSERT_TRUE(client_->DeletePrefix(second).ok());  // v00000002 and nothing else
  auto gap = EtcdStrategyStore::Open(client_, prefix_);
  EXPECT_EQ(gap.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(gap.status().message()), HasSubstr("no version 2"));
}

// --- fleet state ---

v1::FleetControlState WithPin(v1::FleetControlState s, const std::string& worker) {
  v1::Pin* p = s.add_pins();
  p->set_worker_id(worker);
  p->set_model(Fingerprint('a'));
  p->set_version(1);
  return s;
}

TEST_F(EtcdStoreTest, FleetStateIsACompareAndSwapThatAStaleReplicaLoses) {
  auto store = OpenStore();
  ASSERT_TRUE(store->Publish(NthStrategy(0, Fingerprint('a')), {}).ok());
  auto exists = [&](const std::string& fp, uint64_t v) { return store->Get(fp, v).ok(); };
  EtcdFleetState a(client_, prefix_), b(client_, prefix_);
  auto sa = a.Read(exists), sb = b.Read(exists);
  ASSERT_TRUE(sa.ok() && sb.ok()) << sa.status() << sb.status();
  EXPECT_EQ(sa->generation(), 0u);

  std::atomic<uint64_t> seen_by_b{0};
  b.Watch([&](v1::FleetControlState s) { seen_by_b = s.generation(); });
  v1::FleetControlState next = WithPin(*sa, "w1");
  ASSERT_TRUE(a.Write(&next).ok());
  EXPECT_EQ(next.generation(), 1u);
  EXPECT_TRUE(WaitFor([&] { return seen_by_b == 1; }));

  // B decided on generation 0: its write loses, naming the key, and leaves its state as it was.
  v1::FleetControlState stale = WithPin(*sb, "w2");
  absl::Status s = b.Write(&stale);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(a.state_key()));
  EXPECT_EQ(stale.generation(), 0u);
  auto fresh = b.Read(exists);
  ASSERT_TRUE(fresh.ok());
  ASSERT_EQ(fresh->pins_size(), 1);
  EXPECT_EQ(fresh->pins(0).worker_id(), "w1");

  // A fence that does not hold (another replica leads) refuses the write.
  a.SetWriteFence(EtcdCompare::ValueIs(prefix_ + "/leader", "replica-a"));
  v1::FleetControlState fenced = WithPin(next, "w3");
  EXPECT_EQ(a.Write(&fenced).code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(client_->Put(prefix_ + "/leader", "replica-a").ok());
  EXPECT_TRUE(a.Write(&fenced).ok());
}

TEST_F(EtcdStoreTest, ALostFleetStateIsDataLossNotAnEmptyFleet) {
  auto store = OpenStore();
  ASSERT_TRUE(store->Publish(NthStrategy(0, Fingerprint('a')), {}).ok());
  auto exists = [&](const std::string& fp, uint64_t v) { return store->Get(fp, v).ok(); };
  EtcdFleetState a(client_, prefix_);
  v1::FleetControlState s = WithPin(*a.Read(exists), "w1");
  ASSERT_TRUE(a.Write(&s).ok());
  ASSERT_TRUE(a.Write(&s).ok());  // generation 2

  ASSERT_TRUE(client_->DeletePrefix(a.state_key()).ok());
  auto lost = a.Read(exists);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(lost.status().message()), HasSubstr(a.state_key()));

  ASSERT_TRUE(client_->Put(a.state_key(), "{\"generation\": \"1\"}").ok());  // replaced: 1 != 2
  auto replaced = a.Read(exists);
  EXPECT_EQ(replaced.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(replaced.status().message()), HasSubstr("generation 1"));

  ASSERT_TRUE(client_
                  ->Put(a.state_key(),
                        "{\"generation\": \"2\", \"pins\": [{\"worker_id\": "
                        "\"w1\", \"model\": \"" +
                            Fingerprint('a') + "\", \"version\": 9}]}")
                  .ok());  // a version the registry lacks
  auto unknown = a.Read(exists);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("version 9"));
}

TEST_F(EtcdStoreTest, TwoControllersShareOneRolloutStateAndARestartResumesIt) {
  auto store_a = OpenStore(), store_b = OpenStore();
  const std::string fp = Fingerprint('a');
  ASSERT_TRUE(store_a->Publish(NthStrategy(0, fp), {"m", ""}).ok());
  ASSERT_TRUE(store_a->Publish(NthStrategy(1, fp), {"m", ""}).ok());
  RolloutControllerOptions options;
  auto a = RolloutController::Open(options, store_a.get(),
                                   std::make_unique<EtcdFleetState>(client_, prefix_));
  ASSERT_TRUE(a.ok()) << a.status();
  options.may_advance = [] { return false; };  // a follower
  auto b = RolloutController::Open(options, store_b.get(),
                                   std::make_unique<EtcdFleetState>(client_, prefix_));
  ASSERT_TRUE(b.ok()) << b.status();

  auto r = (*a)->CreateRollout(fp, "m", 2, {50, 100}, "");
  ASSERT_TRUE(r.ok()) << r.status();
  // B learns of it through its watch, with no request of its own.
  EXPECT_TRUE(WaitFor([&] { return (*b)->ListRollouts().size() == 1; }));
  // Commands on either replica act on the one shared state.
  auto paused = (*b)->Pause(r->rollout_id());
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_TRUE(WaitFor([&] {
    auto got = (*a)->GetRollout(r->rollout_id());
    return got.ok() && got->state() == v1::ROLLOUT_PAUSED;
  }));
  auto resumed = (*a)->Resume(r->rollout_id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), v1::ROLLOUT_RUNNING);
  // A controller restarted on the same etcd resumes from the stored state.
  a->reset();
  auto again = RolloutController::Open({}, store_a.get(),
                                       std::make_unique<EtcdFleetState>(client_, prefix_));
  ASSERT_TRUE(again.ok()) << again.status();
  auto got = (*again)->GetRollout(r->rollout_id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state(), v1::ROLLOUT_RUNNING);
}

// A worker's end of a strategy stream, recording what it is sent.
class FakeChannel : public WorkerChannel {
 public:
  void Send(const v1::StrategyAssignment& a) override {
    absl::MutexLock lock(&mu_);
    sent_.push_back(a);
  }
  uint64_t LastVersion() {
    absl::MutexLock lock(&mu_);
    return sent_.empty() ? 0 : sent_.back().version();
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::StrategyAssignment> sent_;
};

TEST_F(EtcdStoreTest, TheLeaderRollsOutToAWorkerStreamingToAnotherReplica) {
  auto store_a = OpenStore(), store_b = OpenStore();
  const std::string fp = Fingerprint('a');
  auto v1 = store_a->Publish(NthStrategy(0, fp), {"m", ""});
  auto v2 = store_a->Publish(NthStrategy(1, fp), {"m", ""});
  ASSERT_TRUE(v1.ok() && v2.ok());
  auto lease = client_->GrantLease(absl::Seconds(30));
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto open = [&](EtcdStrategyStore* store, const std::string& replica, bool leader) {
    auto state = std::make_unique<EtcdFleetState>(client_, prefix_);
    state->SetReplica(replica, [l = *lease] { return l; });
    RolloutControllerOptions options;
    options.may_advance = [leader] { return leader; };
    auto c = RolloutController::Open(options, store, std::move(state));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  };
  auto a = open(store_a.get(), "replica-a", true), b = open(store_b.get(), "replica-b", false);
  ASSERT_TRUE(a && b);

  // w1 streams to B, the follower, running version 1.
  FakeChannel w1;
  v1::WorkerHello hello;
  hello.set_worker_id("w1");
  hello.set_model_fingerprint(fp);
  hello.set_current_version(1);
  hello.set_current_strategy_id(v1->record.strategy->id());
  b->Hello(&w1, hello);
  // The leader sees it through B's record.
  EXPECT_TRUE(WaitFor([&] {
    const v1::FleetStatus f = a->Fleet();
    return f.workers_size() == 1 && f.workers(0).worker_id() == "w1" && f.workers(0).connected();
  }));

  auto r = a->CreateRollout(fp, "m", 2, {100}, "");
  ASSERT_TRUE(r.ok()) << r.status();
  // A selected w1; B adopted that state and sent w1 the target.
  EXPECT_TRUE(WaitFor([&] { return w1.LastVersion() == 2; }));
  v1::StrategyAck ack;
  ack.set_version(2);
  ack.set_strategy_id(v2->record.strategy->id());
  ack.set_applied(true);
  b->Ack(&w1, ack);
  // B's record of the ACK lets the leader complete the step; B learns of it too.
  EXPECT_TRUE(WaitFor([&] {
    auto got = a->GetRollout(r->rollout_id());
    return got.ok() && got->state() == v1::ROLLOUT_COMPLETED;
  }));
  EXPECT_TRUE(WaitFor([&] {
    auto got = b->GetRollout(r->rollout_id());
    return got.ok() && got->state() == v1::ROLLOUT_COMPLETED;
  }));
}

TEST_F(EtcdStoreTest, WhileEtcdIsDownWritesAreUnavailableAndReadsServedThenItResumes) {
  // Its own etcd: this test kills it.
  auto etcd = testing::EtcdProcess::Start("etcd_down");
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  auto client = std::make_shared<EtcdClient>(std::vector<std::string>{(*etcd)->endpoint()});
  auto store = EtcdStrategyStore::Open(client, "/down");
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string fp = Fingerprint('d');
  ASSERT_TRUE((*store)->Publish(NthStrategy(0, fp), {}).ok());

  (*etcd)->Kill();
  auto refused = (*store)->Publish(NthStrategy(1, fp), {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr((*etcd)->endpoint()));
  auto known = (*store)->Get(fp, 1);  // from memory
  EXPECT_TRUE(known.ok()) << known.status();
  EXPECT_EQ((*store)->Get(fp, 2).status().code(), absl::StatusCode::kUnavailable);

  ASSERT_TRUE((*etcd)->Restart().ok());
  absl::StatusOr<PublishOutcome> after = absl::UnknownError("not tried");
  EXPECT_TRUE(WaitFor([&] {
    after = (*store)->Publish(NthStrategy(1, fp), {});
    return after.ok();
  }));
  EXPECT_EQ(after->record.version, 2u);
}

}  // namespace
}  // namespace kvshare
