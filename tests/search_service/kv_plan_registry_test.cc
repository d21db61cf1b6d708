// The registry stores a strategy's KV plan (issue 17) and gives it back with the same id: a
// plan over the same sharing is another version; read back from the directory store's files
// after reopening, the plan and the id are what was published, and a strategy without a plan
// still has none.
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"
#include "common/strategy/sharing_strategy.h"
#include "gtest/gtest.h"
#include "search_service/server/directory_strategy_store.h"

namespace kvshare {
namespace {

const std::string kFp(64, 'a');

SharingStrategy Base() { return *SharingStrategy::Create({0, 1, 1, 3}, kFp); }

SharingStrategy Plan() {
  auto st = Base().WithKvTypes({KvType::kF16, KvType::kInt4, KvType::kInt4, KvType::kInt8});
  EXPECT_TRUE(st.ok()) << st.status();
  return *st;
}

TEST(KvPlanRegistryTest, TheRegistryStoresThePlanAndRoundTripsItsId) {
  const std::string dir =
      absl::StrFormat("%s/kv_plan_store.%d", ::testing::TempDir(), static_cast<int>(getpid()));
  std::filesystem::remove_all(dir);
  const auto plan = std::make_shared<const SharingStrategy>(Plan());
  const auto base = std::make_shared<const SharingStrategy>(Base());
  {
    auto store = DirectoryStrategyStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    auto a = (*store)->Publish(base, {"m", ""});
    ASSERT_TRUE(a.ok()) << a.status();
    auto b = (*store)->Publish(plan, {"m", ""});
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(b->created);  // same sharing, another plan: another version
    EXPECT_EQ(b->record.version, 2u);
  }
  auto reopened = DirectoryStrategyStore::Open(dir);  // read back from the files
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto got = (*reopened)->GetById(plan->id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version, 2u);
  EXPECT_EQ(got->strategy->id(), plan->id());
  EXPECT_EQ(got->strategy->kv_types(), plan->kv_types());
  auto plain = (*reopened)->GetById(base->id());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->strategy->has_kv_types());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvshare
