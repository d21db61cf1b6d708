// The strategy's wire form carries exactly what its JSON form does.
#include "proto/wire/strategy_wire.h"

#include "gtest/gtest.h"

namespace kvshare {
namespace {

TEST(StrategyWireTest, RoundTripKeepsContentIdAndProvenance) {
  auto st = SharingStrategy::Create({0, 0, 2, 2, 0}, std::string(64, 'f'));
  ASSERT_TRUE(st.ok());
  st->provenance().method = "kvsharer";
  st->provenance().order = "dissimilar";
  st->provenance().threshold = 0.5;
  st->provenance().target_layers = 3;
  v1::SharingStrategy msg;
  ToProto(*st, &msg);
  EXPECT_EQ(msg.kv_source_size(), 5);
  auto back = FromProto(msg);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), st->id());
  EXPECT_EQ(back->kv_source(), st->kv_source());
  EXPECT_EQ(back->provenance().order, "dissimilar");
  EXPECT_EQ(back->provenance().target_layers, 3);
}

TEST(StrategyWireTest, RejectsInvalidStrategiesAndMismatchedIds) {
  v1::SharingStrategy msg;
  msg.set_model_fingerprint(std::string(64, 'f'));
  for (int s : {0, 0, 1}) msg.add_kv_source(s);
  auto bad = FromProto(msg);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("layer 2 reads layer 1, which itself shares layer 0"),
            std::string::npos);
  msg.set_kv_source(2, 0);
  msg.set_id("0123");
  bad = FromProto(msg);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("does not match its content"), std::string::npos);
}

TEST(StrategyWireTest, OwningLayersCountsTheLayersThatReadThemselves) {
  v1::SharingStrategy msg;
  for (int s : {0, 0, 2, 2, 0, 5}) msg.add_kv_source(s);
  EXPECT_EQ(OwningLayers(msg), 3);  // layers 0, 2 and 5
  EXPECT_EQ(OwningLayers(v1::SharingStrategy()), 0);
}

}  // namespace
}  // namespace kvshare
