// The KV types end to end on SmolLM2-135M: the pool's bytes are exactly block_bytes /
// block_tokens per position and owning layer (int4 tails aside, counted on their own), and
// held-out quality on WikiText-2 moves by what each type's precision costs — bounds loose
// enough for any correct implementation, tight enough that a wrong scale or a stale tail
// fails. Reference: an independent numpy probe (issue 17) measured +0.0006 nats for int8 and
// +0.005 for KIVI-style int4 over 32 windows of 512 tokens; here 4 windows of 256 tokens.
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/engine/quality_probe.h"
#include "common/engine/query_weights.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"
#include "tests/support/wikitext_ids.h"

namespace kvshare {
namespace {

class KvTypeEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::SmolLm2Path());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    ids_ = new std::vector<int32_t>(
        testing::WikiTextIds(*model_, 40000, /*add_bos=*/false, 4 * 256 + 1));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ids_;
  }
  static absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(KvType type) {
    EngineOptions o;
    o.kv_type = type;
    o.max_step_rows = 256;
    o.default_pool_tokens = 1024;
    return Engine::Create(*model_, MakeCpuBackend(2), o);
  }
  static double MeanNll(KvType type) {
    auto engine = MakeEngine(type);
    EXPECT_TRUE(engine.ok()) << engine.status();
    PerplexityOptions po;
    po.context = 256;
    po.stride = 256;
    auto r = EvaluatePerplexity(**engine, *ids_, po);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens_scored, 4 * 256);
    return r->mean_nll;
  }
  static Model* model_;
  static std::vector<int32_t>* ids_;
};
Model* KvTypeEngineTest::model_ = nullptr;
std::vector<int32_t>* KvTypeEngineTest::ids_ = nullptr;

TEST_F(KvTypeEngineTest, PoolBytesPerTokenAreTheBlockBytesOfTheType) {
  // SmolLM2: 30 layers, 3 KV heads of 64 channels; llama.cpp's f16 cache holds 23040 bytes.
  const std::vector<std::pair<KvType, int64_t>> per_token = {
      {KvType::kF32, 46080}, {KvType::kF16, 23040}, {KvType::kInt8, 11880},
      {KvType::kInt4, 7920}, {KvType::kK4V3, 6840}, {KvType::kInt4A, 8100}};
  for (auto [type, bytes] : per_token) {
    auto engine = MakeEngine(type);
    ASSERT_TRUE(engine.ok()) << engine.status();
    KvCache& kv = (*engine)->kv_cache();
    EXPECT_DOUBLE_EQ(kv.bytes_per_token_per_layer() * 30, bytes) << KvTypeName(type);
    auto seq = (*engine)->AddSequence();
    ASSERT_TRUE(seq.ok());
    std::vector<float> logits;
    ASSERT_TRUE((*engine)->Prefill(*seq, absl::MakeConstSpan(*ids_).subspan(0, 64), &logits).ok());
    EXPECT_EQ(kv.used_bytes(), 64 * bytes) << KvTypeName(type);
    // int4, k4v3, int4a: two f16 blocks per layer (block 0 and the partial block).
    EXPECT_EQ(kv.tail_bytes_in_use(), KvTypeHasTail(type) ? 30 * 2 * 16 * 192 * 2 * 2 : 0);
    (*engine)->RemoveSequence(*seq);
    EXPECT_EQ(kv.used_bytes(), 0);
    EXPECT_EQ(kv.tail_bytes_in_use(), 0);
  }
}

TEST_F(KvTypeEngineTest, Int4IsRefusedWhereHeadsAreNotWholeGroups) {
  auto stories = Model::Load(testing::Asset("stories260K.bin"));  // head_dim 8
  ASSERT_TRUE(stories.ok());
  EngineOptions o;
  o.kv_type = KvType::kInt4;
  auto engine = Engine::Create(**stories, MakeCpuBackend(1), o);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("head_dim is 8"), std::string::npos) << engine.status();
}

TEST_F(KvTypeEngineTest, HeldOutNllMovesByWhatEachTypeCosts) {
  const double f32 = MeanNll(KvType::kF32);
  const double f16 = MeanNll(KvType::kF16);
  const double int8 = MeanNll(KvType::kInt8);
  const double int4 = MeanNll(KvType::kInt4);
  const double k4v3 = MeanNll(KvType::kK4V3);
  const double int4a = MeanNll(KvType::kInt4A);
  std::printf(
      "mean NLL over 1024 WikiText-2 tokens: f32 %.5f f16 %+.5f int8 %+.5f int4 %+.5f k4v3 "
      "%+.5f int4a %+.5f\n",
      f32, f16 - f32, int8 - f32, int4 - f32, k4v3 - f32, int4a - f32);
  EXPECT_GT(f32, 2.0);  // sanity: SmolLM2 on WikiText-2 is ~3.3 nats
  EXPECT_LT(f32, 4.5);
  EXPECT_LT(std::abs(f16 - f32), 0.002);
  EXPECT_LT(std::abs(int8 - f32), 0.01);
  EXPECT_LT(std::abs(int4 - f32), 0.05);
  EXPECT_NE(int4, f32);  // int4 stores something lossy
  EXPECT_LT(std::abs(k4v3 - f32), 0.08);
  EXPECT_NE(k4v3, int4);  // k4v3's V differs from int4's
  EXPECT_LT(std::abs(int4a - f32), 0.05);
  EXPECT_NE(int4a, int4);  // int4a's K bits differ from int4's
}

// int4a's layers carry the model's query weights (common/engine/query_weights.h), the same
// numbers the search's simulation uses.
TEST_F(KvTypeEngineTest, Int4ALayersCarryTheModelsQueryWeights) {
  auto engine = MakeEngine(KvType::kInt4A);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto weights = QueryWeightsOf(*model_);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_EQ((*weights)->layers.size(), 30u);
  for (int l = 0; l < 30; ++l) {
    const KvGeometry& g = (*engine)->kv_cache().LayerGeometry(l);
    EXPECT_EQ(g.type, KvType::kInt4A);
    EXPECT_EQ(g.k_weights, (*weights)->layers[l].data()) << l;
  }
  // Against numpy (tests/reference/query_weights_reference.py, float64, its own tokenizer): the
  // same probe ids, and layers 0, 14 and 29 within 1e-4 relative (fp32 sums of 257 squares).
  const nlohmann::json ref = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/query_weights.json")));
  auto tok = LoadTokenizerForModel(*model_, "");
  ASSERT_TRUE(tok.ok());
  auto ids = QualityProbeIds(**tok, model_->config());
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(int(ids->size()), ref["positions"].get<int>());
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + 8),
            ref["ids_head"].get<std::vector<int32_t>>());
  for (const auto& [layer, want] : ref["weights"].items()) {
    const std::vector<float>& got = (*weights)->layers[std::stoi(layer)];
    ASSERT_EQ(got.size(), want.size());
    for (size_t c = 0; c < got.size(); ++c) {
      const double w = want[c];
      ASSERT_NEAR(got[c], w, 1e-4 * w + 1e-6) << "layer " << layer << " channel " << c;
    }
  }
  // An f16 engine measures nothing until a plan names int4a.
  auto f16 = MakeEngine(KvType::kF16);
  ASSERT_TRUE(f16.ok());
  EXPECT_FALSE((*f16)->kv_cache().has_query_weights());
}

}  // namespace
}  // namespace kvshare
