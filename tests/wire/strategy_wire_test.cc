// The strategy's wire form carries exactly what its JSON form does: attention drops and the
// output projections' header (issue 18) included, the blob itself by hash through a resolver.
#include "proto/wire/strategy_wire.h"

#include <memory>
#include <vector>

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

std::shared_ptr<const OutputProjections> SmallProjections(float scale) {
  std::vector<float> a(6), b(6);
  for (int i = 0; i < 6; ++i) a[i] = scale * i, b[i] = -scale * i;
  auto p = OutputProjections::FromF32(DType::kF16, 2, 3, {1, 3}, {a, b});
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

TEST(StrategyWireTest, DropsAndProjectionsRoundTripWithTheSameIdThroughAResolver) {
  auto base = SharingStrategy::Create({0, 0, 2, 2, 4, 5}, std::string(64, 'f'), {5});
  ASSERT_TRUE(base.ok()) << base.status();
  const auto proj = SmallProjections(0.5f);
  auto st = base->WithProjections(proj);
  ASSERT_TRUE(st.ok()) << st.status();
  v1::SharingStrategy msg;
  ToProto(*st, &msg);
  EXPECT_EQ(msg.attention_dropped_size(), 1);
  EXPECT_EQ(msg.output_projections().sha256(), proj->sha256());
  EXPECT_EQ(msg.output_projections().blob_bytes(), 2u * 3 * 2 * 2);
  EXPECT_EQ(msg.ByteSizeLong() < 1024, true);  // the header, never the blob
  EXPECT_EQ(OwningLayers(msg), 3);             // 0, 2 and 4; 5 is dropped

  // Nothing to resolve with: the hash is named.
  auto unresolved = FromProto(msg);
  EXPECT_EQ(unresolved.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unresolved.status().message().find(proj->sha256()), std::string::npos);

  ProjectionsHeader asked;
  auto back = FromProto(msg, [&](const ProjectionsHeader& h) {
    asked = h;
    return ProjectionsFromBlob(h, proj->blob());
  });
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), st->id());
  EXPECT_EQ(back->attention_dropped(), std::vector<int>{5});
  EXPECT_EQ(asked.layers, (std::vector<int>{1, 3}));
  EXPECT_EQ(asked.rows, 2);
  EXPECT_EQ(asked.cols, 3);

  // Other bytes under the same header: the hash catches them.
  auto other = FromProto(msg, [&](const ProjectionsHeader& h) {
    return ProjectionsFromBlob(h, SmallProjections(0.25f)->blob());
  });
  EXPECT_EQ(other.status().code(), absl::StatusCode::kDataLoss);
  // A resolver's own error comes back unchanged.
  auto down = FromProto(
      msg,
      [](const ProjectionsHeader&) -> absl::StatusOr<std::shared_ptr<const OutputProjections>> {
        return absl::UnavailableError("registry unreachable");
      });
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
}

TEST(StrategyWireTest, LinearSubstitutesTravelInTheHeaderAndKeepTheId) {
  auto base = SharingStrategy::Create({0, 0, 2, 2, 4, 5}, std::string(64, 'f'), {4, 5});
  ASSERT_TRUE(base.ok()) << base.status();
  const std::vector<float> w = {1, 2, 3, 4, 5, 6}, m = {0.5f, -1, 2, 0.25f}, bias = {3, -3};
  auto proj = OutputProjections::FromF32(DType::kF32, 2, 3, {1}, {w}, {{5, m, bias}});
  ASSERT_TRUE(proj.ok()) << proj.status();
  auto st = base->WithProjections(*proj);
  ASSERT_TRUE(st.ok()) << st.status();
  v1::SharingStrategy msg;
  ToProto(*st, &msg);
  EXPECT_EQ(msg.output_projections().blob_bytes(), (2u * 3 + 2 * 2 + 2) * 4);
  ASSERT_EQ(msg.output_projections().substitutes_size(), 1);
  EXPECT_EQ(msg.output_projections().substitutes(0), 5);
  auto back = FromProto(msg, [&](const ProjectionsHeader& h) {
    EXPECT_EQ(h.substitutes, std::vector<int>{5});
    EXPECT_EQ(h.blob_bytes(), (*proj)->blob().size());
    return ProjectionsFromBlob(h, (*proj)->blob());
  });
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), st->id());
  EXPECT_EQ(back->projections()->SubstituteMatrixF32(0), m);
  EXPECT_EQ(back->projections()->SubstituteBiasF32(0), bias);
  // The same bytes under a header without the substitute: its hash no longer matches.
  msg.mutable_output_projections()->clear_substitutes();
  auto stripped = FromProto(
      msg, [&](const ProjectionsHeader& h) { return ProjectionsFromBlob(h, (*proj)->blob()); });
  EXPECT_EQ(stripped.status().code(), absl::StatusCode::kDataLoss) << stripped.status();
}

TEST(StrategyWireTest, ABadProjectionsHeaderIsRefusedNamingTheFieldBeforeAnyFetch) {
  auto st = SharingStrategy::Create({0, 0, 2, 2}, std::string(64, 'f'));
  ASSERT_TRUE(st.ok());
  v1::SharingStrategy msg;
  ToProto(*st, &msg);
  v1::OutputProjectionsRef* ref = msg.mutable_output_projections();
  ref->set_type("f16");
  ref->set_rows(40000);
  ref->set_cols(8);
  ref->add_layers(1);
  ref->set_sha256(std::string(64, 'a'));
  bool fetched = false;
  auto resolve =
      [&](const ProjectionsHeader&) -> absl::StatusOr<std::shared_ptr<const OutputProjections>> {
    fetched = true;
    return absl::InternalError("unreachable");
  };
  auto bad = FromProto(msg, resolve);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("strategy.output_projections: rows 40000"),
            std::string::npos)
      << bad.status();
  ref->set_rows(8);
  ref->set_type("bf16");
  bad = FromProto(msg, resolve);
  EXPECT_NE(bad.status().message().find("strategy.output_projections.type"), std::string::npos);
  ref->set_type("f16");
  ref->set_sha256("../../etc/passwd");
  bad = FromProto(msg, resolve);
  EXPECT_NE(bad.status().message().find("strategy.output_projections.sha256"), std::string::npos);
  EXPECT_FALSE(fetched);
}

}  // namespace
}  // namespace kvshare
