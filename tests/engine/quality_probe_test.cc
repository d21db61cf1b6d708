// The quality probe (common/engine/quality_probe.h): its ids are BOS then the first 256 tokens
// of the fixed text; its figure on stories260K is the mean NLL the naive double-precision
// forward computes (tests/support/naive_llama.h) for the identity and a sharing strategy; and
// the tolerance the control plane applies (kQualityProbeToleranceNats) holds between fp32 and
// every compact KV type on stories260K and SmolLM2, while sharing one layer moves the figure
// by more than it. The measured differences and times are printed (the table in
// docs/ARCHITECTURE.md comes from this run).
#include "common/engine/quality_probe.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/naive_llama.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

Loaded Load(const std::string& path) {
  Loaded l;
  auto model = Model::Load(path);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return l;
  l.model = std::move(*model);
  auto tok = LoadTokenizerForModel(*l.model, "");
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (tok.ok()) l.tokenizer = std::move(*tok);
  return l;
}

std::shared_ptr<const SharingStrategy> Strategy(const Model& m, std::vector<int> kv_source) {
  auto s = SharingStrategy::Create(std::move(kv_source), m.fingerprint());
  EXPECT_TRUE(s.ok()) << s.status();
  return std::make_shared<const SharingStrategy>(std::move(*s));
}

// CPU seconds (all threads) of the last Probe's measurement, for the printed table.
double last_cpu_seconds = 0;

QualityProbeResult Probe(const Loaded& l, KvType type, std::shared_ptr<const SharingStrategy> s) {
  auto probe = QualityProbe::Create(*l.model, *l.tokenizer, MakeCpuBackend(2), type);
  EXPECT_TRUE(probe.ok()) << probe.status();
  const std::clock_t start = std::clock();
  auto r = (*probe)->Measure(std::move(s));
  last_cpu_seconds = double(std::clock() - start) / CLOCKS_PER_SEC;
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

// Mean NLL of ids[1..] under the naive forward.
double NaiveMeanNll(const Model& m, const std::vector<int>& kv_source,
                    const std::vector<int32_t>& ids) {
  const std::vector<testing::Vec> logits = testing::NaiveForward(m, kv_source, ids);
  double sum = 0;
  for (size_t t = 1; t < ids.size(); ++t) {
    const testing::Vec& row = logits[t - 1];
    double max = row[0];
    for (double v : row) max = std::max(max, v);
    double z = 0;
    for (double v : row) z += std::exp(v - max);
    sum -= row[ids[t]] - max - std::log(z);
  }
  return sum / double(ids.size() - 1);
}

TEST(QualityProbeTest, IdsAreBosThenTheFirst256TokensOfTheFixedText) {
  Loaded l = Load(testing::Asset("stories260K.bin"));
  ASSERT_NE(l.tokenizer, nullptr);
  auto ids = QualityProbeIds(*l.tokenizer, l.model->config());
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::vector<int32_t> text = l.tokenizer->Encode(kQualityProbeText, /*add_bos=*/false);
  ASSERT_GE(text.size(), size_t(kQualityProbeTokens));
  ASSERT_EQ(ids->size(), size_t(kQualityProbeTokens) + 1);
  EXPECT_EQ((*ids)[0], l.tokenizer->bos_id());
  EXPECT_EQ(std::vector<int32_t>(ids->begin() + 1, ids->end()),
            std::vector<int32_t>(text.begin(), text.begin() + kQualityProbeTokens));
}

TEST(QualityProbeTest, TheFigureIsTheNaiveForwardsMeanNllOnStories260K) {
  Loaded l = Load(testing::Asset("stories260K.bin"));
  ASSERT_NE(l.tokenizer, nullptr);
  auto ids = QualityProbeIds(*l.tokenizer, l.model->config());
  ASSERT_TRUE(ids.ok()) << ids.status();
  for (const std::vector<int>& kv_source :
       {std::vector<int>{0, 1, 2, 3, 4}, std::vector<int>{0, 0, 2, 2, 4}}) {
    const QualityProbeResult r = Probe(l, KvType::kF32, Strategy(*l.model, kv_source));
    EXPECT_EQ(r.tokens, kQualityProbeTokens);
    EXPECT_NEAR(r.mean_nll, NaiveMeanNll(*l.model, kv_source, *ids), 1e-4);
  }
}

// Every compact KV type against fp32: within the tolerance (what a correct worker on another
// KV type must pass); one shared layer: beyond it (what the probe must catch).
void CheckTolerance(const Loaded& l, const std::string& name, std::vector<int> one_shared) {
  const QualityProbeResult f32 = Probe(l, KvType::kF32, nullptr);
  std::printf("%-12s f32   mean_nll %.5f  wall %.3f s  cpu %.3f s\n", name.c_str(), f32.mean_nll,
              f32.seconds, last_cpu_seconds);
  for (KvType type : {KvType::kF16, KvType::kInt8, KvType::kInt4}) {
    KvGeometry g;
    g.n_kv_heads = l.model->config().n_kv_heads;
    g.head_dim = l.model->config().head_dim;
    g.type = type;
    if (!ValidateKvGeometry(g).ok()) continue;  // int4 needs head_dim % 32 == 0
    const QualityProbeResult r = Probe(l, type, nullptr);
    std::printf("%-12s %-5s mean_nll %.5f  diff %+.5f  wall %.3f s  cpu %.3f s\n", name.c_str(),
                KvTypeName(type), r.mean_nll, r.mean_nll - f32.mean_nll, r.seconds,
                last_cpu_seconds);
    EXPECT_LE(std::abs(r.mean_nll - f32.mean_nll), kQualityProbeToleranceNats) << KvTypeName(type);
  }
  {
    // kvshare-worker --int8-activations (opt-in, not the default): f16 KV on int8 matmuls.
    CpuBackendOptions o;
    o.threads = 2;
    o.matmul.activations = cpu::Activations::kInt8;
    auto probe = QualityProbe::Create(*l.model, *l.tokenizer, MakeCpuBackend(o), KvType::kF16);
    ASSERT_TRUE(probe.ok()) << probe.status();
    auto r = (*probe)->Measure(nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    std::printf("%-12s f16 + int8 activations  diff %+.5f\n", name.c_str(),
                r->mean_nll - f32.mean_nll);
    EXPECT_LE(std::abs(r->mean_nll - f32.mean_nll), kQualityProbeToleranceNats);
  }
  const QualityProbeResult shared = Probe(l, KvType::kF32, Strategy(*l.model, one_shared));
  std::printf("%-12s 1 shared layer  diff %+.5f\n", name.c_str(), shared.mean_nll - f32.mean_nll);
  EXPECT_GT(std::abs(shared.mean_nll - f32.mean_nll), kQualityProbeToleranceNats);
}

TEST(QualityProbeTest, CompactKvTypesAgreeWithinTheToleranceAndASharedLayerDoesNotStories) {
  Loaded l = Load(testing::Asset("stories260K.bin"));
  ASSERT_NE(l.tokenizer, nullptr);
  CheckTolerance(l, "stories260K", {0, 1, 1, 3, 4});
}

TEST(QualityProbeTest, CompactKvTypesAgreeWithinTheToleranceAndASharedLayerDoesNotSmolLm2) {
  Loaded l = Load(testing::SmolLm2Path());
  ASSERT_NE(l.tokenizer, nullptr);
  std::vector<int> one_shared(l.model->config().n_layers);
  for (int i = 0; i < int(one_shared.size()); ++i) one_shared[i] = i;
  one_shared[15] = 14;
  CheckTolerance(l, "SmolLM2", one_shared);
}

}  // namespace
}  // namespace kvshare
