// The KV plan in the strategy (issue 17): per-layer KV types beside kv_source, validated (a
// sharing layer's type is its source's), part of the content id, carried by the JSON file,
// and the proto with the same id (the registry: tests/search_service/kv_plan_registry_test.cc)
// — and absent from strategies
// without one, whose files and ids are what they always were. Ids are pinned to SHA-256
// values computed outside this project (Python hashlib over the documented id input).
#include <memory>
#include <string>
#include <vector>

#include "common/strategy/sharing_strategy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/wire/strategy_wire.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

const std::string kFp(64, 'a');
constexpr KvType kF32 = KvType::kF32, kF16 = KvType::kF16, kI8 = KvType::kInt8, kI4 = KvType::kInt4;

SharingStrategy Base() { return *SharingStrategy::Create({0, 1, 1, 3}, kFp); }

SharingStrategy Plan() {
  auto st = Base().WithKvTypes({kF16, kI4, kI4, kI8});
  EXPECT_TRUE(st.ok()) << st.status();
  return *st;
}

TEST(KvPlanStrategyTest, WithoutAPlanEverythingIsAsBefore) {
  const SharingStrategy st = Base();
  EXPECT_FALSE(st.has_kv_types());
  EXPECT_EQ(st.kv_type(2, kF16), kF16);  // the pool's uniform type
  EXPECT_EQ(st.kv_type(2, kI8), kI8);
  // hashlib.sha256(b"kvshare-strategy-v1\n" + b"a"*64 + b"\n0,1,1,3")
  EXPECT_EQ(st.id(), "bda5b4e434a4ffa5c0e1df0f7550a13900011d05449b9a544feac42eed2e627e");
  EXPECT_EQ(st.CanonicalString(), "0 1 1 3");
  EXPECT_EQ(st.ToJson().find("kv_types"), std::string::npos);
}

TEST(KvPlanStrategyTest, APlanGivesEachLayerItsTypeAndSharingLayersTheirSources) {
  const SharingStrategy st = Plan();
  EXPECT_TRUE(st.has_kv_types());
  EXPECT_EQ(st.kv_type(0, kF32), kF16);
  EXPECT_EQ(st.kv_type(1, kF32), kI4);
  EXPECT_EQ(st.kv_type(2, kF32), kI4);  // reads layer 1's cache
  EXPECT_EQ(st.kv_type(3, kF32), kI8);
  // hashlib.sha256(b"kvshare-strategy-v1\n" + b"a"*64 + b"\n0,1,1,3\nkv_types f16,int4,int4,int8")
  EXPECT_EQ(st.id(), "470c13b89ee1c4f4013d938d0df8f8cdebcf6f9ddba6f52f9aeddd80a4eea1b7");
  EXPECT_EQ(st.CanonicalString(), "0:f16 1:int4 1 3:int8");
  EXPECT_EQ(st.provenance().method, "manual");  // kept from the base
}

TEST(KvPlanStrategyTest, BytesPerTokenAreTheOwningLayersBlockBytesOverBlockTokens) {
  KvGeometry g;  // SmolLM2: 3 KV heads of 64, 16-token blocks
  g.n_kv_heads = 3;
  g.head_dim = 64;
  g.type = kF32;
  // Per layer and token: f32 2*192*4 = 1536, f16 768, int8 384 + 2*3*2 = 396,
  // int4 192/2*2 ... = (3072 + 768 + 384) / 16 = 264.
  EXPECT_DOUBLE_EQ(Plan().KvBytesPerToken(g), 768 + 264 + 396);
  EXPECT_DOUBLE_EQ(Base().KvBytesPerToken(g), 3 * 1536);   // no plan: the pool's type
  EXPECT_EQ(Plan().KvTailBytes(g), 2 * 16 * 192 * 2 * 2);  // one int4 layer's two f16 blocks
  EXPECT_EQ(Base().KvTailBytes(g), 0);
}

TEST(KvPlanStrategyTest, ASharingLayerWhoseTypeIsNotItsSourcesIsRefusedNamingIt) {
  auto st = Base().WithKvTypes({kF16, kI4, kI8, kI8});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.status().message(), HasSubstr("layer 2 reads layer 1's cache, stored as int4"));
  auto short_plan = Base().WithKvTypes({kF16, kF16});
  ASSERT_FALSE(short_plan.ok());
  EXPECT_THAT(short_plan.status().message(), HasSubstr("kv_types has 2 entries"));
}

TEST(KvPlanStrategyTest, ADroppedLayersEntryIsItsOwn) {
  auto dropped = SharingStrategy::Create({0, 1, 1, 3}, kFp, {3});
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  auto st = dropped->WithKvTypes({kF16, kI8, kI8, kI4});
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->CanonicalString(), "0:f16 1:int8 1 x");
  KvGeometry g;
  g.n_kv_heads = 3;
  g.head_dim = 64;
  EXPECT_DOUBLE_EQ(st->KvBytesPerToken(g), 768 + 396);  // the dropped layer stores nothing
}

TEST(KvPlanStrategyTest, JsonRoundTripsWithTheSameIdAndRefusesABadPlan) {
  const SharingStrategy st = Plan();
  const std::string json = st.ToJson();
  EXPECT_THAT(json, HasSubstr("\"kv_types\": [\n    \"f16\",\n    \"int4\""));
  auto back = SharingStrategy::FromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), st.id());
  EXPECT_EQ(back->kv_types(), st.kv_types());

  std::string bad = json;
  bad.replace(bad.find("\"int8\""), 6, "\"int3\"");
  auto refused = SharingStrategy::FromJson(bad, "plan.json");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("kv_types"));
  EXPECT_THAT(refused.status().message(), HasSubstr("entry 3"));

  std::string mismatched = json;  // layer 2 shares layer 1 but says int8
  const size_t second_int4 = mismatched.find("\"int4\"", mismatched.find("\"int4\"") + 1);
  mismatched.replace(second_int4, 6, "\"int8\"");
  auto refused2 = SharingStrategy::FromJson(mismatched, "plan.json");
  ASSERT_FALSE(refused2.ok());
  EXPECT_THAT(refused2.status().message(), HasSubstr("plan.json: field 'kv_types': strategy: "
                                                     "layer 2 reads layer 1's cache"));
}

TEST(KvPlanStrategyTest, ProtoCarriesThePlanWithTheSameId) {
  v1::SharingStrategy msg;
  ToProto(Plan(), &msg);
  ASSERT_EQ(msg.kv_types_size(), 4);
  EXPECT_EQ(msg.kv_types(1), "int4");
  auto back = FromProto(msg);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), Plan().id());
  EXPECT_EQ(back->kv_types(), Plan().kv_types());

  v1::SharingStrategy plain;
  ToProto(Base(), &plain);
  EXPECT_EQ(plain.kv_types_size(), 0);
  EXPECT_EQ(FromProto(plain)->id(), Base().id());

  msg.set_kv_types(3, "fp8");
  auto refused = FromProto(msg);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("strategy.kv_types[3]"));
}

}  // namespace
}  // namespace kvshare
