// The strategy holder is the worker's seam for a strategy that changes at run time: versions
// only move forward, a rejected strategy leaves the current one in place, and requests can pin
// any version still held.
#include "inference_service/strategy_holder.h"

#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const SharingStrategy> Strategy(std::vector<int> kv_source) {
  auto s = SharingStrategy::Create(std::move(kv_source), "fp");
  EXPECT_TRUE(s.ok()) << s.status();
  return std::make_shared<const SharingStrategy>(*s);
}

StrategyHolder FiveLayerHolder(size_t keep = 8) {
  return StrategyHolder(
      [](const SharingStrategy& s) {
        return s.n_layers() == 5 ? absl::OkStatus()
                                 : absl::InvalidArgumentError("strategy: wrong layer count");
      },
      keep);
}

TEST(StrategyHolderTest, NotReadyUntilTheFirstPublish) {
  StrategyHolder h = FiveLayerHolder();
  EXPECT_FALSE(h.Current().has_value());
  EXPECT_EQ(h.Resolve(std::nullopt).status().code(), absl::StatusCode::kUnavailable);
}

TEST(StrategyHolderTest, NewVersionsBecomeCurrentAndVersionsOnlyMoveForward) {
  StrategyHolder h = FiveLayerHolder();
  int notified = 0;
  h.AddListener([&](const VersionedStrategy&) { ++notified; });
  ASSERT_TRUE(h.Publish(3, Strategy({0, 1, 2, 3, 4})).ok());
  ASSERT_TRUE(h.Publish(5, Strategy({0, 0, 2, 2, 4})).ok());
  EXPECT_EQ(h.Current()->version, 5u);
  EXPECT_EQ(h.Resolve(std::nullopt)->strategy->sharing_layers(), 2);
  const absl::Status old = h.Publish(4, Strategy({0, 1, 2, 3, 4}));
  EXPECT_EQ(old.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(old.message()),
              HasSubstr("version 4 is not newer than the current version 5"));
  EXPECT_EQ(h.Current()->version, 5u);
  EXPECT_EQ(notified, 2);
}

TEST(StrategyHolderTest, ARejectedStrategyKeepsTheCurrentVersion) {
  StrategyHolder h = FiveLayerHolder();
  ASSERT_TRUE(h.Publish(1, Strategy({0, 1, 2, 3, 4})).ok());
  const absl::Status s = h.Publish(2, Strategy({0, 1, 2}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.Current()->version, 1u);
}

TEST(StrategyHolderTest, PinnedVersionsResolveWhileHeldAndUnknownOnesNameTheVersion) {
  StrategyHolder h = FiveLayerHolder(/*keep=*/2);
  ASSERT_TRUE(h.Publish(1, Strategy({0, 1, 2, 3, 4})).ok());
  ASSERT_TRUE(h.Publish(2, Strategy({0, 0, 2, 3, 4})).ok());
  EXPECT_EQ(h.Resolve(1)->strategy->sharing_layers(), 0);
  ASSERT_TRUE(h.Publish(3, Strategy({0, 0, 0, 3, 4})).ok());  // version 1 falls out
  EXPECT_THAT(h.Versions(), ::testing::ElementsAre(2, 3));
  const auto gone = h.Resolve(1);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(gone.status().message()),
              HasSubstr("strategy_version 1 is not held by this worker (held: [2, 3])"));
  EXPECT_EQ(h.Resolve(2)->version, 2u);
}

}  // namespace
}  // namespace kvshare
