// Layer-aliased KV cache against a deliberately naive reference (tests/support/naive_llama.h):
// a full recompute of every position in double precision, where a sharing layer's K/V are
// replaced by its source layer's (docs/METHOD.md §1). Model: stories260K (5 layers, GQA 8/4 heads,
// fp32).
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "gtest/gtest.h"
#include "tests/support/naive_llama.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using testing::NaiveForward;
using testing::Vec;

class KvSharingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() { delete model_; }

  std::unique_ptr<Engine> MakeEngine(int block_tokens, int64_t pool_tokens = 4096) {
    EngineOptions o;
    o.block_tokens = block_tokens;
    o.kv_pool_bytes = pool_tokens * model_->config().KvBytesPerToken();
    o.max_step_rows = 64;
    auto e = Engine::Create(*model_, MakeCpuBackend(2), o);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  }
  std::shared_ptr<const SharingStrategy> Strategy(std::vector<int> kv_source) {
    auto s = SharingStrategy::Create(std::move(kv_source), model_->fingerprint());
    EXPECT_TRUE(s.ok()) << s.status();
    return std::make_shared<const SharingStrategy>(*s);
  }
  static std::vector<int32_t> Ids(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> ids{1};
    while (int(ids.size()) < n) ids.push_back(3 + rng() % 509);
    return ids;
  }
  static void ExpectRowNear(const float* got, const Vec& want, const std::string& where) {
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    EXPECT_LT(worst, 2e-4) << where;
  }
  static Model* model_;
};
Model* KvSharingTest::model_ = nullptr;

const std::vector<std::vector<int>> kStrategies = {
    {0, 1, 2, 3, 4},  // identity
    {0, 0, 2, 3, 4},  // one neighbour
    {0, 1, 0, 1, 4},  // two roots, each read by a later layer
    {0, 0, 0, 0, 0},  // everything reads layer 0
    {0, 1, 2, 2, 1},  // non-adjacent source
};

TEST_F(KvSharingTest, PrefillEqualsNaiveReferenceForEveryStrategyAndBlockBoundary) {
  for (int block : {4, 16}) {
    for (int len : {block - 1, block, block + 1, 3 * block + 2}) {
      for (const auto& ks : kStrategies) {
        auto engine = MakeEngine(block);
        const auto ids = Ids(len, len * 31 + block);
        const auto want = NaiveForward(*model_, ks, ids);
        auto seq = engine->AddSequence(Strategy(ks));
        ASSERT_TRUE(seq.ok());
        std::vector<float> logits;
        ASSERT_TRUE(engine->Prefill(*seq, ids, &logits, true).ok());
        for (int t = 0; t < len; ++t) {
          ExpectRowNear(&logits[size_t(t) * 512], want[t],
                        absl::StrFormat("block %d len %d strategy %s pos %d", block, len,
                                        Strategy(ks)->CanonicalString(), t));
        }
      }
    }
  }
}

TEST_F(KvSharingTest, TokenByTokenDecodeAndPrefillThenDecodeEqualNaiveReference) {
  const int len = 21;
  for (const auto& ks : kStrategies) {
    const auto ids = Ids(len, 7);
    const auto want = NaiveForward(*model_, ks, ids);
    for (int split : {1, 4, 9}) {  // prefill `split` tokens, decode the rest one by one
      auto engine = MakeEngine(4);
      auto seq = engine->AddSequence(Strategy(ks));
      ASSERT_TRUE(seq.ok());
      std::vector<float> logits;
      ASSERT_TRUE(engine->Prefill(*seq, absl::MakeConstSpan(ids).subspan(0, split), &logits).ok());
      ExpectRowNear(logits.data(), want[split - 1], "after prefill");
      for (int t = split; t < len; ++t) {
        StepInput in{*seq, absl::MakeConstSpan(&ids[t], 1), false};
        ASSERT_TRUE(engine->Step({in}, &logits).ok());
        ExpectRowNear(
            logits.data(), want[t],
            absl::StrFormat("%s split %d pos %d", Strategy(ks)->CanonicalString(), split, t));
      }
    }
  }
}

TEST_F(KvSharingTest, SequencesWithDifferentStrategiesInterleavedInOnePoolEqualSoloRuns) {
  const auto a_ids = Ids(19, 1), b_ids = Ids(13, 2), c_ids = Ids(9, 3);
  const std::vector<int> a_ks = {0, 0, 2, 2, 4}, b_ks = {0, 1, 2, 3, 4}, c_ks = {0, 0, 0, 0, 0};
  auto engine = MakeEngine(4);
  auto a = engine->AddSequence(Strategy(a_ks));
  auto b = engine->AddSequence(Strategy(b_ks));
  auto c = engine->AddSequence(Strategy(c_ks));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::vector<float> logits;
  // Prefill a and b together (a mixed-strategy batch), then decode all three in one batch,
  // c joining later with its own prefill rows in the same step (continuous batching).
  ASSERT_TRUE(engine
                  ->Step({{*a, absl::MakeConstSpan(a_ids).subspan(0, 5), false},
                          {*b, absl::MakeConstSpan(b_ids).subspan(0, 3), false}},
                         &logits)
                  .ok());
  int ta = 5, tb = 3, tc = 0;
  const auto wa = NaiveForward(*model_, a_ks, a_ids), wb = NaiveForward(*model_, b_ks, b_ids),
             wc = NaiveForward(*model_, c_ks, c_ids);
  while (ta < 19 || tb < 13 || tc < 9) {
    std::vector<StepInput> step;
    std::vector<std::pair<const std::vector<Vec>*, int>> expect;
    if (ta < 19)
      step.push_back({*a, absl::MakeConstSpan(&a_ids[ta], 1), false}),
          expect.push_back({&wa, ta++});
    if (tb < 13)
      step.push_back({*b, absl::MakeConstSpan(&b_ids[tb], 1), false}),
          expect.push_back({&wb, tb++});
    if (tc == 0 && ta >= 8) {
      step.push_back({*c, absl::MakeConstSpan(c_ids).subspan(0, 4), false});
      tc = 4;
      expect.push_back({&wc, 3});
    } else if (tc > 0 && tc < 9) {
      step.push_back({*c, absl::MakeConstSpan(&c_ids[tc], 1), false});
      expect.push_back({&wc, tc++});
    }
    ASSERT_TRUE(engine->Step(step, &logits).ok());
    for (size_t i = 0; i < expect.size(); ++i) {
      ExpectRowNear(&logits[i * 512], (*expect[i].first)[expect[i].second],
                    absl::StrFormat("input %d pos %d", i, expect[i].second));
    }
  }
}

TEST_F(KvSharingTest, PoolBytesAreOwningOverLayersOfTheUnsharedFigure) {
  const int block = 8, len = 40;  // 5 blocks per owning layer
  auto engine = MakeEngine(block);
  for (const auto& ks : kStrategies) {
    auto st = Strategy(ks);
    auto seq = engine->AddSequence(st);
    ASSERT_TRUE(seq.ok());
    ASSERT_TRUE(engine->Prefill(*seq, Ids(len, 5), nullptr).ok());
    const ModelConfig& c = model_->config();
    const int64_t unshared = int64_t(len) * c.KvBytesPerToken();
    EXPECT_EQ(engine->kv_cache().used_bytes() * c.n_layers, unshared * st->owning_layers())
        << st->CanonicalString();
    engine->RemoveSequence(*seq);
    EXPECT_EQ(engine->kv_cache().used_blocks(), 0);
  }
}

TEST_F(KvSharingTest, FullPoolIsResourceExhaustedAndLeavesStoredTokensIntact) {
  auto engine = MakeEngine(4, /*pool_tokens=*/8);  // 8 tokens x 5 layers = 10 blocks of 4
  auto seq = engine->AddSequence();
  ASSERT_TRUE(seq.ok());
  const auto ids = Ids(12, 9);
  std::vector<float> logits;
  ASSERT_TRUE(engine->Prefill(*seq, absl::MakeConstSpan(ids).subspan(0, 8), &logits).ok());
  const std::vector<float> before = logits;
  absl::Status s = engine->Step({{*seq, absl::MakeConstSpan(&ids[8], 1), false}}, &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(engine->kv_cache().length(*seq), 8);
  // A sharing sequence needs fewer blocks: with layers 1..4 reading layer 0, 8 more tokens fit
  // only once the first sequence is gone.
  engine->RemoveSequence(*seq);
  auto shared = engine->AddSequence(Strategy({0, 0, 0, 0, 0}));
  ASSERT_TRUE(shared.ok());
  EXPECT_TRUE(engine->Prefill(*shared, Ids(40, 3), nullptr).ok());  // 10 blocks of layer 0
  EXPECT_EQ(engine->kv_cache().free_blocks(), 0);
}

TEST_F(KvSharingTest, InvalidStrategiesAreRejectedNamingLayerAndRule) {
  const std::string fp = model_->fingerprint();
  struct Case {
    std::vector<int> kv_source;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{1, 1, 2, 3, 4}, "layer 0 must own"},
           {{0, 2, 2, 3, 4}, "layer 1 reads layer 2, a later layer"},
           {{0, 0, 1, 3, 4}, "layer 2 reads layer 1, which itself shares layer 0"},
           {{0, -1, 2, 3, 4}, "layer 1 has kv_source -1"},
       }) {
    auto s = SharingStrategy::Create(c.kv_source, fp);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find(c.message), std::string::npos) << s.status();
  }
  auto engine = MakeEngine(4);
  auto wrong_layers = SharingStrategy::Create({0, 1, 2, 3}, fp);
  ASSERT_TRUE(wrong_layers.ok());
  auto seq = engine->AddSequence(std::make_shared<const SharingStrategy>(*wrong_layers));
  EXPECT_FALSE(seq.ok());
  EXPECT_NE(seq.status().message().find("has 4 layers, the model 'stories260K' has 5"),
            std::string::npos)
      << seq.status();
  auto other_model = SharingStrategy::Create({0, 0, 2, 3, 4}, std::string(64, 'a'));
  ASSERT_TRUE(other_model.ok());
  seq = engine->AddSequence(std::make_shared<const SharingStrategy>(*other_model));
  EXPECT_EQ(seq.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(seq.status().message().find("fingerprint"), std::string::npos);
}

TEST_F(KvSharingTest, StrategyJsonRoundTripsAndCatchesAnEditedId) {
  auto st = Strategy({0, 0, 2, 2, 4});
  auto back = SharingStrategy::FromJson(st->ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kv_source(), st->kv_source());
  EXPECT_EQ(back->id(), st->id());
  std::string edited = st->ToJson();
  edited.replace(edited.find("[\n    0,\n    0,"), 15, "[\n    0,\n    1,");
  auto bad = SharingStrategy::FromJson(edited);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("does not match the content"), std::string::npos)
      << bad.status();
  EXPECT_NE(st->id(), Strategy({0, 1, 2, 3, 4})->id());
}

}  // namespace
}  // namespace kvshare
