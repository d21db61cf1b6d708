// A KV plan end to end (issue 17): the engine stores each owning layer in its plan's type, in
// one pool beside sequences of other plans. Checked against tests/support/naive_llama.h — a
// double-precision full recompute that rounds each owning layer's K/V as a pool of the plan's
// type stores them (its own fp16 and int8 rounding, not the kernels') — on stories260K, whose
// head_dim 8 admits f32, f16 and int8; against the golden values of stories_golden_test for
// an all-f32 plan on an f16 pool; and on SmolLM2 (all four types): the pool holds exactly the
// plan's bytes per token, and a batch mixing plans computes what each plan computes alone.
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/engine/generate.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/naive_llama.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
using testing::NaiveLlamaForward;
using testing::NaiveStrategy;
using testing::Vec;

constexpr KvType kF32 = KvType::kF32, kF16 = KvType::kF16, kI8 = KvType::kInt8, kI4 = KvType::kInt4;

std::vector<int32_t> Ids(int n, uint32_t seed, int vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids{1};
  while (int(ids.size()) < n) ids.push_back(3 + rng() % (vocab - 3));
  return ids;
}

std::shared_ptr<const SharingStrategy> PlanOf(const Model& m, std::vector<int> kv_source,
                                              std::vector<KvType> types) {
  auto s = SharingStrategy::Create(std::move(kv_source), m.fingerprint());
  EXPECT_TRUE(s.ok()) << s.status();
  if (types.empty()) return std::make_shared<const SharingStrategy>(*s);
  auto p = s->WithKvTypes(std::move(types));
  EXPECT_TRUE(p.ok()) << p.status();
  return std::make_shared<const SharingStrategy>(*p);
}

double MaxDiff(const float* got, const Vec& want) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  return worst;
}

// Largest |a[i] - b[i]| over n floats.
double MaxDiff(const float* a, const float* b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, double(std::abs(a[i] - b[i])));
  return worst;
}

// Batching changes nothing but the order of some float reductions (kernel tiling).
constexpr double kBatchTolerance = 1e-3;

class StoriesPlanTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() { delete model_; }
  static std::unique_ptr<Engine> MakeEngine(KvType pool_type, int block_tokens) {
    EngineOptions o;
    o.kv_type = pool_type;
    o.block_tokens = block_tokens;
    o.max_step_rows = 64;
    auto e = Engine::Create(*model_, MakeCpuBackend(2), o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
  static Model* model_;
};
Model* StoriesPlanTest::model_ = nullptr;

TEST_F(StoriesPlanTest, PlanLogitsEqualANaiveReferenceRoundingEachLayerAsThePlanSays) {
  const std::vector<int> ks = {0, 1, 1, 3, 4};
  const std::vector<KvType> plan = {kF32, kI8, kI8, kF16, kI8};
  const auto ids = Ids(37, 5, 512);
  const auto want =
      NaiveLlamaForward(*model_, NaiveStrategy{ks, {}, {}, plan, {}}, ids, true).logits;
  const auto exact =
      NaiveLlamaForward(*model_, NaiveStrategy{ks, {}, {}, {}, {}}, ids, true).logits;
  for (KvType pool_type : {kF32, kF16}) {  // the plan, not the pool's type, decides
    for (int block : {4, 16}) {
      auto engine = MakeEngine(pool_type, block);
      auto seq = engine->AddSequence(PlanOf(*model_, ks, plan));
      ASSERT_TRUE(seq.ok()) << seq.status();
      std::vector<float> logits;
      ASSERT_TRUE(engine->Prefill(*seq, ids, &logits, true).ok());
      double worst = 0, moved = 0;
      for (size_t t = 0; t < ids.size(); ++t) {
        worst = std::max(worst, MaxDiff(&logits[t * 512], want[t]));
        moved = std::max(moved, MaxDiff(&logits[t * 512], exact[t]));
      }
      std::printf("pool %s block %d: |engine - naive plan| %.2e, |engine - unrounded| %.2e\n",
                  KvTypeName(pool_type), block, worst, moved);
      EXPECT_LT(worst, 5e-4) << KvTypeName(pool_type) << " block " << block;
      // The rounding is visible: a layer stored in the wrong type would not match.
      EXPECT_GT(moved, 20 * worst) << KvTypeName(pool_type) << " block " << block;
    }
  }
}

TEST_F(StoriesPlanTest, ABatchMixingPlansComputesWhatEachPlanComputesAlone) {
  const auto a_plan = PlanOf(*model_, {0, 1, 1, 3, 4}, {kI8, kF32, kF32, kI8, kF16});
  const auto b_plan = PlanOf(*model_, {0, 0, 2, 3, 3}, {kF16, kF16, kI8, kF32, kF32});
  const auto c_plan = PlanOf(*model_, {0, 1, 2, 3, 4}, {});  // no plan: the pool's f16
  const auto ids = Ids(21, 9, 512);                          // 3 x 21 rows fit one 64-row step
  auto solo = [&](std::shared_ptr<const SharingStrategy> st) {
    auto engine = MakeEngine(kF16, 4);
    auto seq = engine->AddSequence(st);
    std::vector<float> logits;
    EXPECT_TRUE(engine->Prefill(*seq, ids, &logits, true).ok());
    return logits;
  };
  const auto wa = solo(a_plan), wb = solo(b_plan), wc = solo(c_plan);
  auto engine = MakeEngine(kF16, 4);
  auto a = engine->AddSequence(a_plan), b = engine->AddSequence(b_plan),
       c = engine->AddSequence(c_plan);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::vector<float> logits;
  ASSERT_TRUE(engine
                  ->Step({{*a, absl::MakeConstSpan(ids), true},
                          {*b, absl::MakeConstSpan(ids), true},
                          {*c, absl::MakeConstSpan(ids), true}},
                         &logits)
                  .ok());
  const size_t n = ids.size() * 512;
  ASSERT_EQ(logits.size(), 3 * n);
  EXPECT_LT(MaxDiff(logits.data(), wa.data(), n), kBatchTolerance);
  EXPECT_LT(MaxDiff(logits.data() + n, wb.data(), n), kBatchTolerance);
  EXPECT_LT(MaxDiff(logits.data() + 2 * n, wc.data(), n), kBatchTolerance);
  // The plans differ by far more than that: a sequence read through another's types would show.
  EXPECT_GT(MaxDiff(wa.data(), wb.data(), n), 100 * kBatchTolerance);
  EXPECT_GT(MaxDiff(wa.data(), wc.data(), n), 20 * kBatchTolerance);
  engine->RemoveSequence(*a);
  engine->RemoveSequence(*b);
  engine->RemoveSequence(*c);
  EXPECT_EQ(engine->kv_cache().used_blocks(), 0);
  EXPECT_EQ(engine->kv_cache().free_blocks(), engine->kv_cache().total_blocks());
}

TEST_F(StoriesPlanTest, AnAllF32PlanOnAnF16PoolReproducesTheGoldenValues) {
  auto tok = LoadLlama2cTokenizer(testing::Asset("tok512.bin"), model_->config().vocab_size);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto engine = MakeEngine(kF16, 16);
  const auto plan = PlanOf(*model_, {0, 1, 2, 3, 4}, {kF32, kF32, kF32, kF32, kF32});
  auto seq = engine->AddSequence(plan);
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  ASSERT_TRUE(engine->Prefill(*seq, std::vector<int32_t>{1}, &logits).ok());
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), 403);
  EXPECT_NEAR(logits[403], 17.023516, 2e-5);  // GOLDEN.md, as stories_golden_test
  engine->RemoveSequence(*seq);

  const std::vector<int32_t> prompt = (*tok)->Encode("Once upon a time", /*add_bos=*/true);
  GenerateOptions options;
  options.max_tokens = 28;
  options.strategy = plan;
  auto result = Generate(*engine, **tok, prompt, options);
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<int32_t> golden = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
                                       426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
                                       411, 322, 265, 282, 295, 433, 426, 385};
  EXPECT_EQ(result->tokens, golden);
}

TEST_F(StoriesPlanTest, APlanNamingATypeThePoolCannotHoldIsRefusedNamingTheLayer) {
  auto engine = MakeEngine(kF16, 16);
  auto seq = engine->AddSequence(PlanOf(*model_, {0, 1, 1, 3, 4}, {kF16, kI4, kI4, kF16, kF16}));
  ASSERT_FALSE(seq.ok());
  EXPECT_EQ(seq.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(seq.status().message(),
              HasSubstr("stores layer 1's KV as int4; this KV pool holds only f32, f16, int8"));
}

class SmolLm2PlanTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::SmolLm2Path());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() { delete model_; }
  static Model* model_;
};
Model* SmolLm2PlanTest::model_ = nullptr;

// 30 layers: layers 5, 6 read 4, layer 20 reads 19; owning types: 4 x f32, 7 x f16, 8 x int8,
// 8 x int4 (27 owning). Bytes per token and owning layer (3 KV heads of 64, 16-token blocks):
// f32 1536, f16 768, int8 396, int4 264 => 4*1536 + 7*768 + 8*396 + 8*264 = 16800.
std::shared_ptr<const SharingStrategy> MixedPlan(const Model& m) {
  std::vector<int> ks(30);
  for (int l = 0; l < 30; ++l) ks[l] = l;
  ks[5] = ks[6] = 4;
  ks[20] = 19;
  const KvType order[4] = {kF32, kF16, kI8, kI4};
  const int count[4] = {4, 7, 8, 8};
  std::vector<KvType> types(30);
  int kind = 0, left = count[0];
  for (int l = 0; l < 30; ++l) {
    if (ks[l] != l) {
      types[l] = types[ks[l]];
      continue;
    }
    while (left == 0) left = count[++kind];
    types[l] = order[kind];
    --left;
  }
  return PlanOf(m, ks, types);
}

TEST_F(SmolLm2PlanTest, ThePoolHoldsExactlyThePlansBytesPerToken) {
  EngineOptions o;
  o.kv_type = kF16;
  o.default_pool_tokens = 1024;
  auto engine = Engine::Create(*model_, MakeCpuBackend(2), o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const auto plan = MixedPlan(*model_);
  KvGeometry g = (*engine)->kv_cache().geometry();
  EXPECT_DOUBLE_EQ(plan->KvBytesPerToken(g), 16800);
  const int64_t llama_cpp_f16 = 2 * 30 * 3 * 64 * 2;  // 23040
  std::printf("mixed plan: %.0f KV bytes per token, %.3f of llama.cpp's f16 %lld\n",
              plan->KvBytesPerToken(g), plan->KvBytesPerToken(g) / llama_cpp_f16,
              static_cast<long long>(llama_cpp_f16));
  auto seq = (*engine)->AddSequence(plan);
  ASSERT_TRUE(seq.ok()) << seq.status();
  const auto ids = Ids(64, 3, model_->config().vocab_size);
  std::vector<float> logits;
  ASSERT_TRUE((*engine)->Prefill(*seq, ids, &logits).ok());
  KvCache& kv = (*engine)->kv_cache();
  EXPECT_EQ(kv.used_bytes(), 64 * 16800);
  EXPECT_EQ(kv.used_blocks(), 4 * 27);
  EXPECT_EQ(kv.tail_bytes_in_use(), 8 * 2 * 16 * 192 * 2 * 2);  // two f16 blocks per int4 layer
  EXPECT_EQ(kv.BlocksByType(*plan, 64)[kI4], 4 * 8);
  (*engine)->RemoveSequence(*seq);
  EXPECT_EQ(kv.used_bytes(), 0);
  EXPECT_EQ(kv.tail_bytes_in_use(), 0);
}

TEST_F(SmolLm2PlanTest, ABatchMixingAnInt4PlanAndTheF16PoolComputesWhatEachComputesAlone) {
  EngineOptions o;
  o.kv_type = kF16;
  o.default_pool_tokens = 2048;
  const auto plan = MixedPlan(*model_);
  const auto ids = Ids(40, 8, model_->config().vocab_size);  // 2 blocks and an int4 tail
  auto solo = [&](std::shared_ptr<const SharingStrategy> st) {
    auto engine = Engine::Create(*model_, MakeCpuBackend(2), o);
    auto seq = (*engine)->AddSequence(st);
    std::vector<float> logits;
    EXPECT_TRUE((*engine)->Prefill(*seq, ids, &logits).ok());
    return logits;
  };
  const auto want_plan = solo(plan), want_plain = solo(nullptr);
  auto engine = Engine::Create(*model_, MakeCpuBackend(2), o);
  ASSERT_TRUE(engine.ok());
  auto a = (*engine)->AddSequence(plan), b = (*engine)->AddSequence(nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<float> logits;
  ASSERT_TRUE(
      (*engine)
          ->Step({{*a, absl::MakeConstSpan(ids), false}, {*b, absl::MakeConstSpan(ids), false}},
                 &logits)
          .ok());
  const size_t v = model_->config().vocab_size;
  ASSERT_EQ(logits.size(), 2 * v);
  EXPECT_LT(MaxDiff(logits.data(), want_plan.data(), v), kBatchTolerance);
  EXPECT_LT(MaxDiff(logits.data() + v, want_plain.data(), v), kBatchTolerance);
  const double plan_moves = MaxDiff(want_plan.data(), want_plain.data(), v);
  std::printf("mixed plan vs f16 pool, last-row logits: max |diff| %.3f\n", plan_moves);
  EXPECT_GT(plan_moves, 20 * kBatchTolerance);
}

}  // namespace
}  // namespace kvshare
