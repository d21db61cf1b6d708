// Window prefixes (perplexity.h, KvCache::CopyPrefix) on SmolLM2-135M at 64-token blocks: a
// pass whose windows start from a prefix kept by an earlier pass of another int4-family plan
// scores exactly what it scores alone, bit for bit (the held-out checks of the KV plan search
// rely on it), and plans that store block 0 otherwise are refused a prefix, naming why.
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/test_env.h"
#include "tests/support/wikitext_ids.h"

namespace kvshare {
namespace {

class WindowPrefixesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::SmolLm2Path());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    // Three windows of 200: the last 64 + 136 positions.
    ids_ = new std::vector<int32_t>(
        testing::WikiTextIds(*model_, 20000, /*add_bos=*/true, 3 * 200 + 1));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ids_;
  }
  static std::unique_ptr<Engine> MakeEngine() {
    EngineOptions o;
    o.kv_type = KvType::kF32;
    o.block_tokens = 64;
    o.max_step_rows = 256;
    o.default_pool_tokens = 2048;
    CpuBackendOptions cpu;
    cpu.threads = 1;
    cpu.matmul.activations = cpu::Activations::kInt8x2;  // the search's
    auto e = Engine::Create(*model_, MakeCpuBackend(cpu), o);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  }
  static std::shared_ptr<const SharingStrategy> Uniform(KvType t) {
    const int L = model_->config().n_layers;
    std::vector<int> identity(L);
    for (int l = 0; l < L; ++l) identity[l] = l;
    auto s = SharingStrategy::Create(identity, model_->fingerprint());
    EXPECT_TRUE(s.ok()) << s.status();
    auto p = s->WithKvTypes(std::vector<KvType>(L, t));
    EXPECT_TRUE(p.ok()) << p.status();
    return std::make_shared<const SharingStrategy>(*p);
  }
  static PerplexityOptions Options(KvType t, WindowPrefixes* prefixes) {
    PerplexityOptions po;
    po.context = 200;
    po.stride = 200;
    po.strategy = Uniform(t);
    po.prefixes = prefixes;
    return po;
  }
  static Model* model_;
  static std::vector<int32_t>* ids_;
};
Model* WindowPrefixesTest::model_ = nullptr;
std::vector<int32_t>* WindowPrefixesTest::ids_ = nullptr;

TEST_F(WindowPrefixesTest, PassesFromKeptPrefixesScoreAsWholeWindowsDo) {
  auto a = MakeEngine(), b = MakeEngine();
  Engine* lanes[] = {a.get(), b.get()};
  WindowPrefixes prefixes(64);
  // int4 keeps every window's first block and int4a starts from it; k4v3, whose tail the CPU
  // backend reads through other arithmetic (gathered, not in place), runs its windows whole and
  // keeps its own first blocks, from which f16 (gathered alike) starts.
  for (KvType t : {KvType::kInt4, KvType::kInt4A, KvType::kK4V3, KvType::kF16}) {
    auto whole = EvaluatePerplexity(lanes, *ids_, Options(t, nullptr));
    ASSERT_TRUE(whole.ok()) << whole.status();
    auto split = EvaluatePerplexity(lanes, *ids_, Options(t, &prefixes));
    ASSERT_TRUE(split.ok()) << split.status();
    EXPECT_EQ(split->window_nll_sums, whole->window_nll_sums) << KvTypeName(t);
    EXPECT_EQ(prefixes.kept(), 3) << KvTypeName(t);
  }
  // The unshared fp32 model stores block 0 in f32: it runs whole windows and keeps nothing new.
  PerplexityOptions f32;
  f32.context = 200;
  f32.stride = 200;
  f32.prefixes = &prefixes;
  auto base = EvaluatePerplexity(lanes, *ids_, f32);
  f32.prefixes = nullptr;
  auto want = EvaluatePerplexity(lanes, *ids_, f32);
  ASSERT_TRUE(base.ok() && want.ok());
  EXPECT_EQ(base->window_nll_sums, want->window_nll_sums);
  // Only the kept sequences hold blocks between passes.
  EXPECT_EQ(a->kv_cache().used_blocks() + b->kv_cache().used_blocks(),
            3 * model_->config().n_layers);
}

TEST_F(WindowPrefixesTest, CopyPrefixRefusesWhatWouldNotComputeAlike) {
  auto e = MakeEngine();
  KvCache& kv = e->kv_cache();
  EXPECT_TRUE(kv.PrefixShareable(*Uniform(KvType::kInt4), *Uniform(KvType::kInt4A), 64).ok());
  auto f32 = kv.PrefixShareable(*Uniform(KvType::kInt4), *Uniform(KvType::kF32), 64);
  EXPECT_EQ(f32.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f32.message()), ::testing::HasSubstr("layer 0 is stored int4 and f32"));
  auto apart = kv.PrefixShareable(*Uniform(KvType::kInt4), *Uniform(KvType::kK4V3), 64);
  EXPECT_THAT(std::string(apart.message()), ::testing::HasSubstr("through different arithmetic"));
  EXPECT_TRUE(kv.PrefixShareable(*Uniform(KvType::kK4V3), *Uniform(KvType::kF16), 64).ok());
  auto int8 = kv.PrefixShareable(*Uniform(KvType::kInt8), *Uniform(KvType::kInt8), 64);
  EXPECT_THAT(std::string(int8.message()), ::testing::HasSubstr("int8"));
  auto long_prefix = kv.PrefixShareable(*Uniform(KvType::kInt4), *Uniform(KvType::kInt4), 65);
  EXPECT_THAT(std::string(long_prefix.message()), ::testing::HasSubstr("65"));

  std::vector<int> shared(model_->config().n_layers);
  for (int l = 0; l < int(shared.size()); ++l) shared[l] = l;
  shared[5] = 4;
  auto s = SharingStrategy::Create(shared, model_->fingerprint());
  ASSERT_TRUE(s.ok());
  auto other =
      kv.PrefixShareable(*Uniform(KvType::kF16),
                         *s->WithKvTypes(std::vector<KvType>(shared.size(), KvType::kF16)), 64);
  EXPECT_THAT(std::string(other.message()), ::testing::HasSubstr("layer 5 reads"));

  // The sequence copied from must hold the prefix; the one copied into must be empty.
  auto from = e->AddSequence(Uniform(KvType::kInt4));
  auto to = e->AddSequence(Uniform(KvType::kInt4A));
  ASSERT_TRUE(from.ok() && to.ok());
  auto empty = kv.CopyPrefix(*from, *to, 64);
  EXPECT_THAT(std::string(empty.message()), ::testing::HasSubstr("holds 0"));
  std::vector<float> logits;
  ASSERT_TRUE(e->Prefill(*from, absl::MakeConstSpan(*ids_).subspan(0, 64), &logits).ok());
  ASSERT_TRUE(kv.CopyPrefix(*from, *to, 64).ok());
  EXPECT_EQ(kv.length(*to), 64);
  auto again = kv.CopyPrefix(*from, *to, 64);
  EXPECT_THAT(std::string(again.message()), ::testing::HasSubstr("holds 64 positions already"));
}

}  // namespace
}  // namespace kvshare
