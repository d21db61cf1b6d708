// The StrategyStore contract (search_service/server/strategy_store.h), checked on every
// implementation — the in-memory fake, the crash-safe directory store and the etcd store (on a
// real etcd this binary starts; skipped with the reason when there is no etcd binary) — plus
// what only the directory store promises: versions survive reopening, a crash's leftovers are
// never shown, damage is refused, one process per directory. Output projections (issue 18): a
// strategy carrying them reads back from every store with its blob and the same id, across a
// reopen and from a second etcd replica; a damaged blob is refused naming its file.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/util/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/server/directory_strategy_store.h"
#include "search_service/server/etcd_strategy_store.h"
#include "search_service/server/in_memory_strategy_store.h"
#include "tests/support/etcd_process.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

constexpr int kLayers = 30;

std::string Fingerprint(char c) { return std::string(64, c); }

// Distinct strategies of a 30-layer model: number k shares one pair (i, j), in (i, j) order.
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
  ADD_FAILURE() << "no strategy number " << k;
  return nullptr;
}

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrFormat("%s/%s.%d", ::testing::TempDir(), name, getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

struct InMemory {
  static std::string SkipReason() { return ""; }
  static std::unique_ptr<StrategyStore> Make(const std::string&) {
    return std::make_unique<InMemoryStrategyStore>();
  }
};
struct Directory {
  static std::string SkipReason() { return ""; }
  static std::unique_ptr<StrategyStore> Make(const std::string& dir) {
    auto store = DirectoryStrategyStore::Open(dir);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }
};
// One etcd for the whole binary (killed at exit); each test has its own key prefix.
struct Etcd {
  static std::string SkipReason() {
    return testing::EtcdProcess::Binary().empty()
               ? "no etcd binary (Debian etcd-server; scripts/setup.sh installs it)"
               : "";
  }
  static std::unique_ptr<StrategyStore> Make(const std::string&) {
    static const std::unique_ptr<testing::EtcdProcess> server = [] {
      auto p = testing::EtcdProcess::Start("store_contract");
      EXPECT_TRUE(p.ok()) << p.status();
      return p.ok() ? std::move(*p) : nullptr;
    }();
    static int tests = 0;
    if (server == nullptr) return nullptr;
    auto store = EtcdStrategyStore::Open(
        std::make_shared<EtcdClient>(std::vector<std::string>{server->endpoint()}),
        absl::StrFormat("/contract/%d", ++tests));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }
};

template <typename Impl>
class StrategyStoreContractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string reason = Impl::SkipReason(); !reason.empty()) GTEST_SKIP() << reason;
    store_ = Impl::Make(TempDir("store_contract"));
    ASSERT_NE(store_, nullptr);
  }
  std::unique_ptr<StrategyStore> store_;
};

using Implementations = ::testing::Types<InMemory, Directory, Etcd>;
TYPED_TEST_SUITE(StrategyStoreContractTest, Implementations);

TYPED_TEST(StrategyStoreContractTest, VersionsAreDensePerModelInPublishOrder) {
  const std::string a = Fingerprint('a'), b = Fingerprint('b');
  for (int k = 0; k < 3; ++k) {
    auto pa = this->store_->Publish(NthStrategy(k, a), {"model-a", ""});
    ASSERT_TRUE(pa.ok()) << pa.status();
    EXPECT_TRUE(pa->created);
    EXPECT_EQ(pa->record.version, uint64_t(k + 1));
    auto pb = this->store_->Publish(NthStrategy(10 + k, b), {"model-b", "job-000007"});
    ASSERT_TRUE(pb.ok()) << pb.status();
    EXPECT_EQ(pb->record.version, uint64_t(k + 1));
    EXPECT_EQ(pb->record.source_job_id, "job-000007");
  }
  const std::vector<StrategyRecord> all = this->store_->List("");
  ASSERT_EQ(all.size(), 6u);
  EXPECT_EQ(all[0].model_fingerprint, a);
  EXPECT_EQ(all[3].model_fingerprint, b);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(all[i].version, uint64_t(i + 1));
  EXPECT_EQ(this->store_->List(b).size(), 3u);
  EXPECT_TRUE(this->store_->List(Fingerprint('c')).empty());
}

TYPED_TEST(StrategyStoreContractTest, RepublishingTheSameContentReturnsTheExistingVersion) {
  const std::string a = Fingerprint('a');
  ASSERT_TRUE(this->store_->Publish(NthStrategy(0, a), {}).ok());
  ASSERT_TRUE(this->store_->Publish(NthStrategy(1, a), {}).ok());
  auto again = this->store_->Publish(NthStrategy(0, a), {"another name", ""});
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->record.version, 1u);
  EXPECT_EQ(again->record.model_name, "");  // the record is the first one, unchanged
  EXPECT_EQ(this->store_->List(a).size(), 2u);
}

TYPED_TEST(StrategyStoreContractTest, GetsByVersionOrIdAndNamesWhatIsMissing) {
  const std::string a = Fingerprint('a');
  auto s = NthStrategy(5, a);
  ASSERT_TRUE(this->store_->Publish(NthStrategy(4, a), {}).ok());
  ASSERT_TRUE(this->store_->Publish(s, {}).ok());
  auto by_version = this->store_->Get(a, 2);
  ASSERT_TRUE(by_version.ok());
  EXPECT_EQ(by_version->strategy->id(), s->id());
  auto by_id = this->store_->GetById(s->id());
  ASSERT_TRUE(by_id.ok());
  EXPECT_EQ(by_id->version, 2u);

  auto missing = this->store_->Get(a, 3);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("no strategy version 3"));
  EXPECT_EQ(this->store_->Get(a, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(this->store_->GetById("feed").status().code(), absl::StatusCode::kNotFound);
}

TYPED_TEST(StrategyStoreContractTest, DeprecationKeepsTheRecordAndItsFirstReason) {
  const std::string a = Fingerprint('a');
  auto s = NthStrategy(0, a);
  ASSERT_TRUE(this->store_->Publish(s, {}).ok());
  auto d = this->store_->Deprecate(a, 1, "quality regression");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->deprecated);
  auto again = this->store_->Deprecate(a, 1, "second reason");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->deprecation_reason, "quality regression");
  auto r = this->store_->Get(a, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->deprecated);
  EXPECT_EQ(r->strategy->id(), s->id());
  EXPECT_EQ(this->store_->Deprecate(a, 2, "x").status().code(), absl::StatusCode::kNotFound);
  // Deprecated content is still the same content: republishing it gives its version back.
  auto republished = this->store_->Publish(s, {});
  ASSERT_TRUE(republished.ok());
  EXPECT_FALSE(republished->created);
  EXPECT_EQ(republished->record.version, 1u);
}

TYPED_TEST(StrategyStoreContractTest, RefusesAStrategyThatNamesNoModel) {
  auto no_model = SharingStrategy::Create(std::vector<int>{0, 0}, "");
  ASSERT_TRUE(no_model.ok());
  auto r = this->store_->Publish(std::make_shared<const SharingStrategy>(*no_model), {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("strategy.model_fingerprint"));
  auto path_like = SharingStrategy::Create(std::vector<int>{0, 0}, "../../etc");
  ASSERT_TRUE(path_like.ok());
  r = this->store_->Publish(std::make_shared<const SharingStrategy>(*path_like), {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(this->store_->List("").empty());
}

TYPED_TEST(StrategyStoreContractTest, ConcurrentPublishesGiveDenseVersionsAndNoDuplicates) {
  const std::string a = Fingerprint('a');
  constexpr int kThreads = 8, kDistinct = 40;
  // Every strategy is published by two threads: one of them creates it, the other gets it back.
  std::vector<std::map<std::string, uint64_t>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kDistinct; ++k) {
        if (k % (kThreads / 2) != t % (kThreads / 2)) continue;
        auto r = this->store_->Publish(NthStrategy(k, a), {});
        ASSERT_TRUE(r.ok()) << r.status();
        seen[t][r->record.strategy->id()] = r->record.version;
      }
    });
  }
  for (auto& t : threads) t.join();
  std::map<std::string, uint64_t> versions;
  for (const auto& m : seen) {
    for (const auto& [id, v] : m) {
      auto [it, inserted] = versions.emplace(id, v);
      EXPECT_EQ(it->second, v) << "strategy " << id << " got two versions";
    }
  }
  ASSERT_EQ(versions.size(), size_t(kDistinct));
  std::set<uint64_t> numbers;
  for (const auto& [id, v] : versions) numbers.insert(v);
  ASSERT_EQ(numbers.size(), size_t(kDistinct));
  EXPECT_EQ(*numbers.begin(), 1u);
  EXPECT_EQ(*numbers.rbegin(), uint64_t(kDistinct));
  EXPECT_EQ(this->store_->List(a).size(), size_t(kDistinct));
}

// NthStrategy(k) with a replacement projection for its sharing layer: 600 x 600 f16, 720,000
// bytes (more than one etcd piece of 512 KiB).
std::shared_ptr<const SharingStrategy> Projected(int k, const std::string& fingerprint,
                                                 uint32_t seed) {
  auto base = NthStrategy(k, fingerprint);
  int layer = 0;
  for (int l = 0; l < kLayers; ++l) layer = base->source(l) != l ? l : layer;
  std::vector<float> w(600 * 600);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float((i * 2654435761u + seed) % 2001) / 1000 - 1;
  auto p = OutputProjections::FromF32(DType::kF16, 600, 600, {layer}, {w});
  EXPECT_TRUE(p.ok()) << p.status();
  auto with = base->WithProjections(*p);
  EXPECT_TRUE(with.ok()) << with.status();
  return std::make_shared<const SharingStrategy>(std::move(*with));
}

TYPED_TEST(StrategyStoreContractTest, AStrategyWithProjectionsReadsBackWithItsBlobAndTheSameId) {
  const std::string a = Fingerprint('a');
  const auto s = Projected(3, a, 1);
  const ProjectionsHeader header = HeaderOf(*s->projections());
  EXPECT_EQ(this->store_->GetProjections(header).status().code(), absl::StatusCode::kNotFound);
  auto p = this->store_->Publish(s, {"smollm2", ""});
  ASSERT_TRUE(p.ok()) << p.status();
  auto got = this->store_->GetById(s->id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->strategy->id(), s->id());
  ASSERT_NE(got->strategy->projections(), nullptr);
  EXPECT_EQ(got->strategy->projections()->blob(), s->projections()->blob());
  auto blob = this->store_->GetProjections(header);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ((*blob)->sha256(), header.sha256);
  // The same kv_source without projections is other content: another version.
  auto plain = this->store_->Publish(NthStrategy(3, a), {});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->record.version, 2u);
  // A blob stored ahead of its strategy (an upload) is found by its header.
  const auto later = Projected(4, a, 2);
  ASSERT_TRUE(this->store_->PutProjections(later->projections()).ok());
  ASSERT_TRUE(this->store_->PutProjections(later->projections()).ok());  // idempotent
  auto ahead = this->store_->GetProjections(HeaderOf(*later->projections()));
  ASSERT_TRUE(ahead.ok()) << ahead.status();
  EXPECT_EQ((*ahead)->blob(), later->projections()->blob());
}

class DirectoryStrategyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir("directory_store"); }
  std::unique_ptr<DirectoryStrategyStore> Open() {
    auto store = DirectoryStrategyStore::Open(dir_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }
  std::string dir_;
};

TEST_F(DirectoryStrategyStoreTest, RecordsSurviveReopeningUnchanged) {
  const std::string a = Fingerprint('a');
  std::vector<StrategyRecord> before;
  {
    auto store = Open();
    auto s = NthStrategy(3, a);
    auto with_provenance = std::make_shared<SharingStrategy>(*s);
    with_provenance->provenance().method = "kvsharer";
    with_provenance->provenance().threshold = 0.5;
    with_provenance->provenance().score = 0.123456789012345;
    ASSERT_TRUE(store->Publish(with_provenance, {"smollm2", "job-000001"}).ok());
    ASSERT_TRUE(store->Publish(NthStrategy(4, a), {}).ok());
    ASSERT_TRUE(store->Deprecate(a, 2, "worse").ok());
    before = store->List("");
  }
  auto store = Open();
  const std::vector<StrategyRecord> after = store->List("");
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].version, before[i].version);
    EXPECT_EQ(after[i].strategy->ToJson(), before[i].strategy->ToJson());
    EXPECT_EQ(after[i].model_name, before[i].model_name);
    EXPECT_EQ(after[i].source_job_id, before[i].source_job_id);
    EXPECT_EQ(after[i].publish_time, before[i].publish_time);
    EXPECT_EQ(after[i].deprecated, before[i].deprecated);
    EXPECT_EQ(after[i].deprecation_reason, before[i].deprecation_reason);
  }
  auto next = store->Publish(NthStrategy(5, a), {});
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->record.version, 3u);  // the sequence goes on where it was
}

TEST_F(DirectoryStrategyStoreTest, ACrashBeforeTheRenameLeavesNoVersionAndNoTemporary) {
  const std::string a = Fingerprint('a');
  std::string half_written;
  {
    auto store = Open();
    ASSERT_TRUE(store->Publish(NthStrategy(0, a), {}).ok());
    ASSERT_TRUE(store->Publish(NthStrategy(1, a), {}).ok());
    // What a crash in the middle of publishing version 3 leaves: its temporary, cut short.
    const std::string record = store->RecordPath(a, 2);
    auto text = ReadFileToString(record);
    ASSERT_TRUE(text.ok());
    half_written = store->RecordPath(a, 3) + ".tmp.4242";
    std::ofstream(half_written) << text->substr(0, text->size() / 2);
  }
  auto store = Open();
  EXPECT_EQ(store->List(a).size(), 2u);
  EXPECT_FALSE(std::filesystem::exists(half_written));
  auto next = store->Publish(NthStrategy(7, a), {});
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->record.version, 3u);
}

TEST_F(DirectoryStrategyStoreTest, ADamagedRecordIsRefusedNamingTheFile) {
  const std::string a = Fingerprint('a');
  std::string record;
  {
    auto store = Open();
    ASSERT_TRUE(store->Publish(NthStrategy(0, a), {}).ok());
    ASSERT_TRUE(store->Publish(NthStrategy(1, a), {}).ok());
    record = store->RecordPath(a, 2);
  }
  auto text = ReadFileToString(record);
  ASSERT_TRUE(text.ok());
  ASSERT_TRUE(WriteFileAtomically(record, text->substr(0, text->size() - 20)).ok());
  auto reopened = DirectoryStrategyStore::Open(dir_);
  EXPECT_EQ(reopened.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(reopened.status().message()), HasSubstr(record));
}

TEST_F(DirectoryStrategyStoreTest, AGapInTheVersionsIsRefused) {
  const std::string a = Fingerprint('a');
  std::string second;
  {
    auto store = Open();
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(store->Publish(NthStrategy(k, a), {}).ok());
    second = store->RecordPath(a, 2);
  }
  ASSERT_EQ(::unlink(second.c_str()), 0);
  auto reopened = DirectoryStrategyStore::Open(dir_);
  EXPECT_EQ(reopened.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(reopened.status().message()), HasSubstr("no version 2"));
}

TEST_F(DirectoryStrategyStoreTest, OneOwnerPerDirectory) {
  auto first = Open();
  auto second = DirectoryStrategyStore::Open(dir_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("LOCK"));
  first.reset();
  EXPECT_TRUE(DirectoryStrategyStore::Open(dir_).ok());
}

TEST_F(DirectoryStrategyStoreTest, ProjectionsSurviveReopeningAndADamagedBlobIsRefused) {
  const std::string a = Fingerprint('a');
  const auto s = Projected(0, a, 3);
  std::string blob_path;
  {
    auto store = Open();
    ASSERT_TRUE(store->Publish(s, {}).ok());
    blob_path = store->ProjectionsDir() + "/" + s->projections()->BlobFileName();
  }
  {
    auto store = Open();
    auto got = store->Get(a, 1);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->strategy->id(), s->id());
    ASSERT_NE(got->strategy->projections(), nullptr);
    EXPECT_EQ(got->strategy->projections()->blob(), s->projections()->blob());
  }
  std::string bytes = s->projections()->blob();
  bytes[1000] ^= 0x40;
  ASSERT_TRUE(WriteFileAtomically(blob_path, bytes).ok());
  auto reopened = DirectoryStrategyStore::Open(dir_);
  EXPECT_EQ(reopened.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(reopened.status().message()), HasSubstr("does not match"));
}

}  // namespace
}  // namespace kvshare
