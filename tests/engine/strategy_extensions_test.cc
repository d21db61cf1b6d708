// Attention drop and replacement output projections (issue 18) in the engine, against the
// naive double-precision reference forward (tests/support/naive_llama.h), and in the strategy
// file. Model: stories260K (5 layers, dim 64, 8 query / 4 KV heads, fp32).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/util/file.h"
#include "common/util/sha256.h"
#include "gtest/gtest.h"
#include "tests/support/naive_llama.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using testing::NaiveLlamaForward;
using testing::NaiveStrategy;
using testing::Vec;

class StrategyExtensionsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() { delete model_; }

  static std::unique_ptr<Engine> MakeEngine(int block_tokens = 4) {
    EngineOptions o;
    o.block_tokens = block_tokens;
    o.kv_pool_bytes = 4096 * model_->config().KvBytesPerToken();
    o.max_step_rows = 64;
    auto e = Engine::Create(*model_, MakeCpuBackend(2), o);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  }
  static std::vector<int32_t> Ids(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> ids{1};
    while (int(ids.size()) < n) ids.push_back(3 + rng() % 509);
    return ids;
  }
  // Random projections for `layers` near the model's W_o (so the model still makes sense).
  // With `substitutes`: a random linear substitute for each of those (dropped) layers.
  static std::shared_ptr<const OutputProjections> Projections(
      const std::vector<int>& layers, DType type, uint32_t seed,
      const std::vector<int>& substitutes = {}) {
    const ModelConfig& c = model_->config();
    const int q = c.n_heads * c.head_dim;
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    std::vector<std::vector<float>> m;
    for (int l : layers) {
      const float* wo = static_cast<const float*>(model_->weights().layers[l].wo.data);
      std::vector<float> w(wo, wo + size_t(c.dim) * q);
      for (float& v : w) v = 0.7f * v + noise(rng);
      m.push_back(w);
    }
    std::vector<LinearSubstituteF32> subs;
    for (int l : substitutes) {
      LinearSubstituteF32 sub{l, std::vector<float>(size_t(c.dim) * c.dim), {}};
      for (float& v : sub.matrix) v = 2 * noise(rng);
      for (int i = 0; i < c.dim; ++i) sub.bias.push_back(2 * noise(rng));
      subs.push_back(std::move(sub));
    }
    auto p = OutputProjections::FromF32(type, c.dim, q, layers, m, subs);
    EXPECT_TRUE(p.ok()) << p.status();
    return *p;
  }
  static NaiveStrategy Naive(const SharingStrategy& st) {
    NaiveStrategy n{st.kv_source(), st.attention_dropped(), {}, {}, {}};
    if (const auto& p = st.projections(); p != nullptr) {
      for (int i = 0; i < int(p->layers().size()); ++i) {
        const std::vector<float> w = p->LayerF32(i);  // the stored (maybe f16) values
        n.wo[p->layers()[i]] = std::vector<double>(w.begin(), w.end());
      }
      for (int i = 0; i < int(p->substitutes().size()); ++i) {
        const std::vector<float> m = p->SubstituteMatrixF32(i), b = p->SubstituteBiasF32(i);
        n.substitutes[p->substitutes()[i]] = {{m.begin(), m.end()}, {b.begin(), b.end()}};
      }
    }
    return n;
  }
  static void ExpectRowNear(const float* got, const Vec& want, const std::string& where) {
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    EXPECT_LT(worst, 2e-4) << where;
  }
  static std::shared_ptr<const SharingStrategy> Make(std::vector<int> kv, std::vector<int> drop,
                                                     std::shared_ptr<const OutputProjections> p) {
    auto st = SharingStrategy::Create(std::move(kv), model_->fingerprint(), std::move(drop));
    EXPECT_TRUE(st.ok()) << st.status();
    auto with = st->WithProjections(std::move(p));
    EXPECT_TRUE(with.ok()) << with.status();
    return std::make_shared<const SharingStrategy>(std::move(*with));
  }
  static Model* model_;
};
Model* StrategyExtensionsTest::model_ = nullptr;

TEST_F(StrategyExtensionsTest, DroppedAndProjectedLayersEqualTheNaiveReferenceInPrefillAndDecode) {
  const std::vector<std::shared_ptr<const SharingStrategy>> strategies = {
      Make({0, 1, 2, 3, 4}, {2}, nullptr),                                   // one drop
      Make({0, 1, 2, 3, 4}, {1, 2, 3, 4}, nullptr),                          // all but layer 0
      Make({0, 0, 2, 3, 2}, {3}, nullptr),                                   // drop beside shares
      Make({0, 0, 2, 2, 4}, {}, Projections({1, 3}, DType::kF32, 1)),        // projections f32
      Make({0, 0, 2, 3, 2}, {3}, Projections({1, 4}, DType::kF16, 2)),       // f16 + drop
      Make({0, 1, 2, 3, 4}, {2}, Projections({}, DType::kF32, 5, {2})),      // a substitute alone
      Make({0, 0, 2, 3, 2}, {3}, Projections({1, 4}, DType::kF16, 6, {3})),  // with projections
      Make({0, 1, 2, 3, 4}, {1, 2, 4}, Projections({}, DType::kF16, 7, {1, 4})),  // and a bare drop
  };
  const int len = 14;
  for (const auto& st : strategies) {
    const auto ids = Ids(len, 5);
    const auto want = NaiveLlamaForward(*model_, Naive(*st), ids, true).logits;
    for (int split : {len, 5}) {  // whole prefill; prefill 5 then decode one by one
      auto engine = MakeEngine();
      auto seq = engine->AddSequence(st);
      ASSERT_TRUE(seq.ok()) << seq.status();
      std::vector<float> logits;
      ASSERT_TRUE(
          engine->Prefill(*seq, absl::MakeConstSpan(ids).subspan(0, split), &logits, true).ok());
      for (int t = 0; t < split; ++t) {
        ExpectRowNear(&logits[size_t(t) * 512], want[t],
                      absl::StrFormat("%s prefill pos %d", st->CanonicalString(), t));
      }
      for (int t = split; t < len; ++t) {
        ASSERT_TRUE(engine->Step({{*seq, absl::MakeConstSpan(&ids[t], 1), false}}, &logits).ok());
        ExpectRowNear(logits.data(), want[t],
                      absl::StrFormat("%s decode pos %d", st->CanonicalString(), t));
      }
    }
  }
}

TEST_F(StrategyExtensionsTest, ADroppedLayerAllocatesNoKvBlocks) {
  const int block = 8, len = 40;  // 5 blocks per owning layer
  auto engine = MakeEngine(block);
  auto st = Make({0, 1, 1, 3, 4}, {3, 4}, nullptr);  // owning: 0 and 1
  EXPECT_EQ(st->owning_layers(), 2);
  EXPECT_EQ(st->sharing_layers(), 3);
  auto seq = engine->AddSequence(st);
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE(engine->Prefill(*seq, Ids(len, 3), nullptr).ok());
  EXPECT_EQ(engine->kv_cache().used_blocks(), 2 * 5);
  engine->RemoveSequence(*seq);
  EXPECT_EQ(engine->kv_cache().used_blocks(), 0);
}

TEST_F(StrategyExtensionsTest, ABatchMixingStrategyVersionsAppliesEachSequencesOwnProjection) {
  // Same kv_source, three versions: model W_o, projections P1, projections P2; plus a drop.
  const auto plain = Make({0, 0, 2, 2, 4}, {}, nullptr);
  const auto p1 = Make({0, 0, 2, 2, 4}, {}, Projections({1, 3}, DType::kF16, 11));
  const auto p2 = Make({0, 0, 2, 2, 4}, {}, Projections({1, 3}, DType::kF16, 12));
  const auto dropped = Make({0, 1, 2, 3, 4}, {1, 3}, nullptr);
  const auto substituted = Make({0, 1, 2, 3, 4}, {1, 3}, Projections({}, DType::kF16, 13, {1, 3}));
  const auto other = Make({0, 1, 2, 3, 4}, {1, 3}, Projections({}, DType::kF16, 14, {1, 3}));
  const std::vector<std::shared_ptr<const SharingStrategy>> versions = {
      p1, plain, p2, dropped, substituted, other, substituted, p1};
  EXPECT_NE(p1->id(), plain->id());
  EXPECT_NE(p1->id(), p2->id());
  auto engine = MakeEngine();
  std::vector<SeqId> seqs;
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::vector<Vec>> want;
  for (size_t i = 0; i < versions.size(); ++i) {
    auto seq = engine->AddSequence(versions[i]);
    ASSERT_TRUE(seq.ok());
    seqs.push_back(*seq);
    ids.push_back(Ids(9 + int(i), 40 + i));
    want.push_back(NaiveLlamaForward(*model_, Naive(*versions[i]), ids.back(), true).logits);
  }
  // Prefill 4 tokens of every sequence in one step, then decode all of them together.
  std::vector<StepInput> step;
  for (size_t i = 0; i < seqs.size(); ++i) {
    step.push_back({seqs[i], absl::MakeConstSpan(ids[i]).subspan(0, 4), false});
  }
  std::vector<float> logits;
  ASSERT_TRUE(engine->Step(step, &logits).ok());
  for (size_t i = 0; i < seqs.size(); ++i) {
    ExpectRowNear(&logits[i * 512], want[i][3], absl::StrFormat("prefill input %d", i));
  }
  for (int t = 4; t < 9; ++t) {
    step.clear();
    for (size_t i = 0; i < seqs.size(); ++i) {
      step.push_back({seqs[i], absl::MakeConstSpan(&ids[i][t], 1), false});
    }
    ASSERT_TRUE(engine->Step(step, &logits).ok());
    for (size_t i = 0; i < seqs.size(); ++i) {
      ExpectRowNear(&logits[i * 512], want[i][t], absl::StrFormat("input %d pos %d", i, t));
    }
  }
}

TEST_F(StrategyExtensionsTest, IdsOfStrategiesWithoutExtensionsAreUnchanged) {
  const std::string fp = model_->fingerprint();
  // The formula every strategy id had before drops and projections existed.
  const std::string old_id = Sha256Hex(absl::StrCat("kvshare-strategy-v1\n", fp, "\n0,0,2,2,4"));
  auto st = SharingStrategy::Create({0, 0, 2, 2, 4}, fp);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->id(), old_id);
  auto no_drops = SharingStrategy::Create({0, 0, 2, 2, 4}, fp, {});
  ASSERT_TRUE(no_drops.ok());
  EXPECT_EQ(no_drops->id(), old_id);
  auto no_projections = st->WithProjections(nullptr);
  ASSERT_TRUE(no_projections.ok());
  EXPECT_EQ(no_projections->id(), old_id);
  // An extension changes the id, and the JSON of a plain strategy has neither new field.
  EXPECT_NE(Make({0, 0, 2, 2, 4}, {4}, nullptr)->id(), old_id);
  EXPECT_EQ(st->ToJson().find("attention_dropped"), std::string::npos);
  EXPECT_EQ(st->ToJson().find("output_projections"), std::string::npos);
}

TEST_F(StrategyExtensionsTest, FilesRoundTripWithTheSameIdAndCatchADamagedBlob) {
  const std::string dir = ::testing::TempDir() + "/strategy_ext";
  ASSERT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  const auto st = Make({0, 0, 2, 3, 2}, {3}, Projections({1, 4}, DType::kF16, 3));
  const std::string path = dir + "/s.json";
  ASSERT_TRUE(st->WriteFile(path).ok());
  auto back = SharingStrategy::ReadFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), st->id());
  EXPECT_EQ(back->attention_dropped(), std::vector<int>({3}));
  ASSERT_NE(back->projections(), nullptr);
  EXPECT_EQ(back->projections()->blob(), st->projections()->blob());
  EXPECT_EQ(back->projections()->bytes_per_layer(), size_t(64 * 64 * 2));
  EXPECT_EQ(back->CanonicalString(), "0 0* 2 x 2*");
  // Without a directory to read the blob from, the JSON cannot be resolved.
  auto no_dir = SharingStrategy::FromJson(st->ToJson());
  EXPECT_EQ(no_dir.status().code(), absl::StatusCode::kFailedPrecondition) << no_dir.status();
  // A damaged blob is DataLoss.
  std::string blob = st->projections()->blob();
  blob[100] ^= 0x40;
  ASSERT_TRUE(WriteFileAtomically(dir + "/" + st->projections()->BlobFileName(), blob).ok());
  auto damaged = SharingStrategy::ReadFile(path);
  EXPECT_EQ(damaged.status().code(), absl::StatusCode::kDataLoss) << damaged.status();
}

TEST_F(StrategyExtensionsTest, SubstitutesRoundTripFilesWithTheSameIdAndChangeIt) {
  const std::string dir = ::testing::TempDir() + "/strategy_subst";
  ASSERT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  const auto st = Make({0, 0, 2, 3, 2}, {3}, Projections({1, 4}, DType::kF16, 3, {3}));
  const auto bare = Make({0, 0, 2, 3, 2}, {3}, Projections({1, 4}, DType::kF16, 3));
  EXPECT_NE(st->id(), bare->id());
  EXPECT_NE(st->projections()->sha256(), bare->projections()->sha256());
  EXPECT_EQ(st->projections()->bytes_per_substitute(), size_t(64 * 64 + 64) * 2);
  EXPECT_EQ(st->projections()->blob().size(), size_t(2 * 64 * 64 * 2 + (64 * 64 + 64) * 2));
  const std::string path = dir + "/s.json";
  ASSERT_TRUE(st->WriteFile(path).ok());
  auto back = SharingStrategy::ReadFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), st->id());
  EXPECT_EQ(back->projections()->substitutes(), std::vector<int>({3}));
  EXPECT_EQ(back->projections()->SubstituteBiasF32(0), st->projections()->SubstituteBiasF32(0));
  EXPECT_EQ(back->CanonicalString(), "0 0* 2 x* 2*");
}

TEST_F(StrategyExtensionsTest, InvalidDropsAndProjectionsAreRejectedNamingTheLayer) {
  const std::string fp = model_->fingerprint();
  struct Case {
    std::vector<int> kv_source, dropped;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{0, 1, 2, 3, 4}, {0}, "attention_dropped names layer 0"},
           {{0, 1, 2, 3, 4}, {5}, "attention_dropped names layer 5"},
           {{0, 1, 2, 3, 4}, {2, 2}, "names layer 2 twice"},
           {{0, 0, 2, 3, 4}, {1}, "layer 1 drops its attention but has kv_source 0"},
           {{0, 1, 2, 2, 4}, {2}, "layer 3 reads layer 2, whose attention is dropped"},
       }) {
    auto s = SharingStrategy::Create(c.kv_source, fp, c.dropped);
    ASSERT_FALSE(s.ok()) << c.message;
    EXPECT_NE(s.status().message().find(c.message), std::string::npos) << s.status();
  }
  auto st = SharingStrategy::Create({0, 0, 2, 3, 4}, fp);
  ASSERT_TRUE(st.ok());
  auto owning = st->WithProjections(Projections({2}, DType::kF16, 4));
  ASSERT_FALSE(owning.ok());
  EXPECT_NE(owning.status().message().find("layer 2, which is not a sharing layer"),
            std::string::npos)
      << owning.status();
  auto kept = st->WithProjections(Projections({1}, DType::kF16, 4, {3}));
  ASSERT_FALSE(kept.ok());
  EXPECT_NE(kept.status().message().find("substitute for layer 3, whose attention this strategy "
                                         "does not drop"),
            std::string::npos)
      << kept.status();
}

}  // namespace
}  // namespace kvshare
