// The strategy search's simulation of KV types (IncrementalForward::RunPlan, KvRoundTrip)
// against the serving pool itself: on SmolLM2-135M, the calibration NLL the search computes
// for "every layer stored as T" equals the NLL the Engine computes over the same samples with a
// pool of type T (its WriteKv, blocks and int4 tails, and attention kernels), and scoring a plan
// incrementally from its first changed layer equals scoring it from scratch.
// Samples of 40 tokens: two full 16-token blocks and an 8-position int4 tail each.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/engine/transformer.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/calibration.h"
#include "search_service/kv_round_trip.h"
#include "search_service/loss_evaluator.h"
#include "search_service/strategy_search.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

constexpr int kSamples = 3, kTokens = 40;

class KvPlanSimulationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::SmolLm2Path());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    auto tok = LoadTokenizerForModel(*model_, "");
    ASSERT_TRUE(tok.ok()) << tok.status();
    const std::string text = testing::ReadFileOrDie(testing::Asset("wikitext-2-raw-test.txt"));
    CalibrationOptions o;
    o.samples = kSamples;
    o.tokens = kTokens;
    auto set = BuildCalibrationSet(text, **tok, o, "wikitext-2-raw-test.txt");
    ASSERT_TRUE(set.ok()) << set.status();
    calibration_ = new CalibrationSet(std::move(*set));
    backend_ = MakeCpuBackend(2).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete calibration_;
    delete backend_;
  }

  // The Engine's mean NLL over the calibration samples (each one window) with a pool of `type`.
  static double EngineNll(KvType type, std::shared_ptr<const SharingStrategy> strategy = nullptr) {
    EngineOptions o;
    o.kv_type = type;
    o.max_step_rows = 256;
    o.default_pool_tokens = 256;
    // int4 read gathered: the in-place read rounds differently, and an int4 forward pass does not
    // keep a rounding difference small (cpu_backend.h int4_in_place).
    CpuBackendOptions cpu;
    cpu.threads = 2;
    cpu.int4_in_place = false;
    auto engine = Engine::Create(*model_, MakeCpuBackend(cpu), o);
    EXPECT_TRUE(engine.ok()) << engine.status();
    double sum = 0;
    for (int s = 0; s < kSamples; ++s) {
      PerplexityOptions po;
      po.context = kTokens;
      po.stride = kTokens;
      po.strategy = strategy;
      auto r =
          EvaluatePerplexity(**engine, absl::MakeConstSpan(calibration_->sample(s), kTokens), po);
      EXPECT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->tokens_scored, kTokens - 1);
      sum += r->mean_nll;
    }
    return sum / kSamples;
  }

  static std::unique_ptr<Transformer> MakeTransformer() {
    auto t = Transformer::Create(*model_, *backend_, SearchMaxRows(*calibration_));
    EXPECT_TRUE(t.ok()) << t.status();
    return std::move(*t);
  }

  static std::vector<int> Identity() {
    std::vector<int> s(model_->config().n_layers);
    for (size_t l = 0; l < s.size(); ++l) s[l] = int(l);
    return s;
  }

  static Model* model_;
  static CalibrationSet* calibration_;
  static Backend* backend_;
};
Model* KvPlanSimulationTest::model_ = nullptr;
CalibrationSet* KvPlanSimulationTest::calibration_ = nullptr;
Backend* KvPlanSimulationTest::backend_ = nullptr;

TEST_F(KvPlanSimulationTest, UniformTypesMatchTheServingPool) {
  auto transformer = MakeTransformer();
  auto loss = LossEvaluator::Create(*transformer, *calibration_, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(loss.ok()) << loss.status();
  const int L = model_->config().n_layers;
  // The unshared fp32 forward is the pool's f32.
  EXPECT_NEAR((*loss)->unshared().nll, EngineNll(KvType::kF32), 2e-4);
  for (KvType type : {KvType::kF16, KvType::kInt8, KvType::kInt4, KvType::kK4V3}) {
    auto c = (*loss)->ScorePlan(Identity(), std::vector<KvType>(L, type), 0);
    ASSERT_TRUE(c.ok()) << c.status();
    // Summation order differs (batched GEMMs vs per-window); the types' own effects are
    // 1e-5 (f16) to 1e-2 (int4) nats, so 2e-4 separates a right simulation from a wrong one.
    EXPECT_NEAR(c->nll, EngineNll(type), 2e-4) << KvTypeName(type);
  }
}

// A plan mixing types per layer (and a sharing layer reading a k4v3 cache), through the pool
// of mixed types (common/engine/kv_pool.h) against the simulation.
TEST_F(KvPlanSimulationTest, AMixedPlanMatchesTheServingPool) {
  const int L = model_->config().n_layers;
  std::vector<KvType> types(L, KvType::kInt4);
  types[0] = KvType::kInt8;
  types[9] = KvType::kF16;
  types[17] = KvType::kInt8;
  for (int l : {3, 4, 20, 21}) types[l] = KvType::kK4V3;
  std::vector<int> source = Identity();
  source[21] = 20;  // reads a k4v3 cache
  auto strategy = SharingStrategy::Create(source, model_->fingerprint());
  ASSERT_TRUE(strategy.ok()) << strategy.status();
  auto plan = strategy->WithKvTypes(types);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto transformer = MakeTransformer();
  auto loss = LossEvaluator::Create(*transformer, *calibration_, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(loss.ok()) << loss.status();
  auto c = (*loss)->ScorePlan(source, types, 0);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->nll, EngineNll(KvType::kF16, std::make_shared<const SharingStrategy>(*plan)),
              2e-4);
}

TEST_F(KvPlanSimulationTest, IncrementalPlanScoresEqualFromScratch) {
  const int L = model_->config().n_layers;
  std::vector<KvType> types(L, KvType::kF16);
  types[7] = KvType::kInt4;
  types[12] = KvType::kInt8;
  std::vector<int> source = Identity();
  source[20] = 7;  // reads layer 7's int4 cache
  types[20] = KvType::kInt4;

  auto t1 = MakeTransformer();
  auto a = LossEvaluator::Create(*t1, *calibration_, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE((*a)->ScorePlan(Identity(), std::vector<KvType>(L, KvType::kF16), 0).ok());
  ASSERT_TRUE((*a)->AcceptPlan(Identity(), std::vector<KvType>(L, KvType::kF16), 0).ok());
  auto incremental = (*a)->ScorePlan(source, types, 7);
  ASSERT_TRUE(incremental.ok()) << incremental.status();

  auto t2 = MakeTransformer();
  auto b = LossEvaluator::Create(*t2, *calibration_, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(b.ok()) << b.status();
  auto scratch = (*b)->ScorePlan(source, types, 0);
  ASSERT_TRUE(scratch.ok()) << scratch.status();
  EXPECT_DOUBLE_EQ(incremental->nll, scratch->nll);
  EXPECT_GT(incremental->nll, (*a)->unshared().nll);

  // A first changed layer after a changed type is refused, naming the layer.
  auto late = (*a)->ScorePlan(Identity(), types, 8);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(late.status().message()), ::testing::HasSubstr("layer 7 is int4"));
}

TEST(KvRoundTrip, KeepsF32AndRoundsATailToF16) {
  KvGeometry g;
  g.block_tokens = 16;
  g.n_kv_heads = 1;
  g.head_dim = 32;
  g.type = KvType::kInt4;
  std::vector<float> k(20 * 32), v(20 * 32);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = 0.001f * float(i % 97) - 0.03f + 1e-7f;
    v[i] = -0.002f * float(i % 89) + 0.05f + 1e-7f;
  }
  std::vector<float> k2 = k, v2 = v;
  KvRoundTrip(g).Apply(20, k2.data(), v2.data());
  // Positions 16..19 are the f16 tail: within f16's rounding of each value.
  for (size_t i = 16 * 32; i < k.size(); ++i) {
    EXPECT_NEAR(k2[i], k[i], 1e-4) << i;
    EXPECT_NEAR(v2[i], v[i], 1e-4) << i;
  }
  // The full block is int4: within half a step of its range / 15 (plus f16 rounding), and
  // not exact.
  double worst = 0;
  for (size_t i = 0; i < 16 * 32; ++i) worst = std::max(worst, double(std::fabs(k2[i] - k[i])));
  EXPECT_GT(worst, 1e-5);
  EXPECT_LT(worst, 0.096 / 15 / 2 * 1.01 + 1e-4);
  g.type = KvType::kF32;
  std::vector<float> k3 = k, v3 = v;
  KvRoundTrip(g).Apply(20, k3.data(), v3.data());
  EXPECT_EQ(k3, k);
  EXPECT_EQ(v3, v);
}

}  // namespace
}  // namespace kvshare
