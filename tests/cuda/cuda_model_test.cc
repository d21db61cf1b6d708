// Whole-model logits of the CUDA engine against the CPU engine (same Engine code, two
// backends): stories260K (fp32, GQA 8/4) and SmolLM2-135M (Q4_1, GQA 9/3, 30 layers), prefill
// over block boundaries and batched decode of sequences running different sharing strategies
// in one pool. Skipped, with the reason, where no CUDA device is usable.
//
// Tolerance: the CUDA backend rounds weights and GEMM inputs to fp16, so logits move by a small
// fraction of their spread; a row passes when its largest difference is within 3% of the CPU
// row's range (max - min) and the cosine of the two rows is >= 0.999.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

void ExpectLogitRowsClose(const std::vector<float>& got, const std::vector<float>& want, int vocab,
                          const std::string& where) {
  ASSERT_EQ(got.size(), want.size()) << where;
  const size_t rows = want.size() / vocab;
  int argmax_same = 0;
  for (size_t r = 0; r < rows; ++r) {
    const float* g = &got[r * vocab];
    const float* w = &want[r * vocab];
    const auto [lo, hi] = std::minmax_element(w, w + vocab);
    double worst = 0, dot = 0, gg = 0, ww = 0;
    for (int i = 0; i < vocab; ++i) {
      worst = std::max(worst, double(std::fabs(g[i] - w[i])));
      dot += double(g[i]) * w[i];
      gg += double(g[i]) * g[i];
      ww += double(w[i]) * w[i];
    }
    const double range = *hi - *lo;
    EXPECT_LE(worst, 0.03 * range) << where << " row " << r;
    EXPECT_GE(dot / std::sqrt(gg * ww), 0.999) << where << " row " << r;
    argmax_same += (std::max_element(g, g + vocab) - g) == (hi - w);
  }
  // Near-ties may swap; most rows must agree.
  EXPECT_GE(argmax_same, static_cast<int>(rows * 9 / 10)) << where;
}

std::vector<int32_t> Ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids{1};
  while (static_cast<int>(ids.size()) < n) ids.push_back(3 + rng() % (vocab - 3));
  return ids;
}

class CudaModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    KVSHARE_REQUIRE_CUDA();
    const std::string path =
        GetParam() == "stories260K" ? testing::Asset("stories260K.bin") : testing::SmolLm2Path();
    auto model = Model::Load(path);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }

  std::unique_ptr<Engine> MakeEngine(std::unique_ptr<Backend> backend, int block_tokens) {
    EngineOptions o;
    o.block_tokens = block_tokens;
    o.kv_pool_bytes = 2048 * model_->config().KvBytesPerToken();
    o.max_step_rows = 64;  // prompts longer than this run in chunks
    auto e = Engine::Create(*model_, std::move(backend), o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  std::unique_ptr<Backend> NewCuda() {
    DeviceOptions o;
    o.device = "cuda";
    auto b = MakeBackend(o);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(b->backend) : nullptr;
  }

  std::shared_ptr<const SharingStrategy> Strategy(std::vector<int> kv_source) {
    auto s = SharingStrategy::Create(std::move(kv_source), model_->fingerprint());
    EXPECT_TRUE(s.ok()) << s.status();
    return std::make_shared<const SharingStrategy>(*s);
  }

  // kv_source for a strategy where every third layer from 2 on reads the layer before it.
  std::vector<int> SomeSharing() {
    std::vector<int> ks(model_->config().n_layers);
    for (int l = 0; l < static_cast<int>(ks.size()); ++l)
      ks[l] = (l >= 2 && l % 3 == 2) ? l - 1 : l;
    return ks;
  }

  std::unique_ptr<Model> model_;
};

TEST_P(CudaModelTest, PrefillLogitsMatchTheCpuEngine) {
  const int vocab = model_->config().vocab_size;
  for (int block : {16, 7}) {
    for (int len : {1, block, block + 1, 150}) {
      const auto ids = Ids(len, vocab, len * 13 + block);
      std::vector<float> want, got;
      for (bool cuda : {false, true}) {
        auto engine = MakeEngine(cuda ? NewCuda() : MakeCpuBackend(2), block);
        ASSERT_NE(engine, nullptr);
        auto seq = engine->AddSequence();
        ASSERT_TRUE(seq.ok()) << seq.status();
        absl::Status s = engine->Prefill(*seq, ids, cuda ? &got : &want, /*all_logits=*/true);
        ASSERT_TRUE(s.ok()) << s;
      }
      ExpectLogitRowsClose(got, want, vocab,
                           absl::StrFormat("%s prefill len %d block %d", GetParam(), len, block));
    }
  }
}

TEST_P(CudaModelTest, BatchedDecodeWithMixedStrategiesMatchesTheCpuEngine) {
  const int vocab = model_->config().vocab_size;
  const std::vector<std::vector<int>> strategies = {
      Strategy(SomeSharing())->kv_source(),
      std::vector<int>(model_->config().n_layers, 0),  // everything reads layer 0
      {}};                                             // identity
  const std::vector<int> prompt_lens = {5, 17, 33};
  std::vector<float> logits[2];
  for (bool cuda : {false, true}) {
    auto engine = MakeEngine(cuda ? NewCuda() : MakeCpuBackend(2), 16);
    ASSERT_NE(engine, nullptr);
    std::vector<SeqId> seqs;
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = 0; i < strategies.size(); ++i) {
      auto seq = engine->AddSequence(strategies[i].empty() ? nullptr : Strategy(strategies[i]));
      ASSERT_TRUE(seq.ok()) << seq.status();
      seqs.push_back(*seq);
      prompts.push_back(Ids(prompt_lens[i], vocab, 77 + i));
      std::vector<float> unused;
      ASSERT_TRUE(engine->Prefill(*seq, prompts.back(), &unused).ok());
    }
    // 20 decode steps with fixed (not sampled) tokens, all three sequences in every step.
    std::vector<float> step_logits;
    for (int step = 0; step < 20; ++step) {
      std::vector<std::vector<int32_t>> tok(seqs.size());
      std::vector<StepInput> inputs;
      for (size_t i = 0; i < seqs.size(); ++i) {
        tok[i] = {static_cast<int32_t>(3 + (step * 31 + i * 7) % (vocab - 3))};
        inputs.push_back({seqs[i], tok[i], false});
      }
      ASSERT_TRUE(engine->Step(inputs, &step_logits).ok());
      logits[cuda].insert(logits[cuda].end(), step_logits.begin(), step_logits.end());
    }
  }
  ExpectLogitRowsClose(logits[1], logits[0], vocab, GetParam() + " batched decode");
}

TEST_P(CudaModelTest, KvMemoryFractionSizesThePoolFromFreeDeviceMemory) {
  auto backend = NewCuda();
  ASSERT_NE(backend, nullptr);
  EngineOptions o;
  o.kv_memory_fraction = 0.05;
  auto e = Engine::Create(*model_, std::move(backend), o);
  ASSERT_TRUE(e.ok()) << e.status();
  const int64_t pool = (*e)->kv_cache().total_blocks() * (*e)->kv_cache().block_bytes();
  EXPECT_GT(pool, 0);
  EXPECT_LE(pool, static_cast<int64_t>(0.05 * testing::Cuda().info.total_memory_bytes));
}

INSTANTIATE_TEST_SUITE_P(Models, CudaModelTest, ::testing::Values("stories260K", "smollm2"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace kvshare
