// SmolLM2-135M-Instruct re-quantised by llama.cpp's llama-quantize (K-quant mixes, made by
// tests/reference/make_test_models.sh) against the independent float64 numpy forward of the same
// file (tests/reference/smollm2_reference.py --gguf ... -> smollm2_<quant>_logits.json, weights
// dequantised by the `gguf` package): top logits at the first, middle and last positions of
// four prompts to 1e-3 relative and the mean NLL of a WikiText sentence, on the default (exact
// fp32-activation) path. Skips, naming the command, where the cached file is missing.
#include <cmath>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

class SmolLm2KQuantTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SmolLm2KQuantTest, LogitsAndNllMatchTheNumpyForwardOfTheSameFile) {
  const std::string file = "smollm2-" + GetParam() + ".gguf";
  const std::string path = testing::TestModel(file);
  if (path.empty()) GTEST_SKIP() << testing::TestModelMissing(file);
  const nlohmann::json ref = nlohmann::json::parse(testing::ReadFileOrDie(
      testing::SourcePath("tests/reference/smollm2_" + GetParam() + "_logits.json")));
  auto model = Model::Load(path);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = Engine::Create(**model, MakeCpuBackend(2));
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int vocab = (*model)->config().vocab_size;
  for (const auto& p : ref["prompts"]) {
    SCOPED_TRACE(p["name"].get<std::string>());
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    auto seq = (*engine)->AddSequence();
    ASSERT_TRUE(seq.ok());
    std::vector<float> logits;
    ASSERT_TRUE((*engine)->Prefill(*seq, ids, &logits, /*all_logits=*/true).ok());
    ASSERT_EQ(logits.size(), ids.size() * vocab);
    for (const auto& check : p["checks"]) {
      const int pos = check["position"];
      const auto top_ids = check["top_ids"].get<std::vector<int32_t>>();
      const auto top_logits = check["top_logits"].get<std::vector<double>>();
      for (size_t i = 0; i < top_ids.size(); ++i) {
        const double want = top_logits[i];
        EXPECT_NEAR(logits[size_t(pos) * vocab + top_ids[i]], want,
                    1e-3 * std::max(1.0, std::abs(want)))
            << "position " << pos << " id " << top_ids[i];
      }
    }
    (*engine)->RemoveSequence(*seq);
    if (p.contains("nll")) {
      PerplexityOptions options;
      options.context = 512;
      auto r = EvaluatePerplexity(**engine, ids, options);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_NEAR(r->mean_nll, p["nll"]["mean_nll"].get<double>(), 1e-3);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Quants, SmolLm2KQuantTest, ::testing::Values("q4_k_m", "q5_k_m", "q6_k"));

}  // namespace
}  // namespace kvshare
