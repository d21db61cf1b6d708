// kvshare against llama.cpp on the same GGUF files (issue 20 item 4): the mean NLL of the first
// 512 tokens of WikiText-2 test (and 1024 for Gemma 3, where the local layers' window cuts)
// within 1%, and greedy continuations of three prompts token for token, where the two may part
// only at a step whose llama.cpp top1 - top2 logit margin is below kNearTie (there the two
// engines' arithmetic may pick either; the comparison stops where they part). Figures from
// tests/reference/llama_cpp_reference.sh (llama_cpp_reference.json), token ids included, so
// the tokenizer is not under test here. Skips, naming the command, where a file is missing.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/generate.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

// Logits. llama.cpp's K-quant and Q8_0 dot products quantise the activations to 8 bits
// (Q8_K / Q8_0) where kvshare's default path keeps them fp32; on SmolLM2 Q4_K_M that moved a
// logit by ~0.3 ("def fibonacci(n):", step 7, llama.cpp's margin 0.285), so a step whose margin
// is under half a logit is a near-tie here.
constexpr double kNearTie = 0.5;

const nlohmann::json& Reference() {
  static const nlohmann::json* ref = new nlohmann::json(nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/llama_cpp_reference.json"))));
  return *ref;
}

class LlamaCppAgreementTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppAgreementTest, NllWithinOnePercentAndGreedyTextEqualUpToNearTies) {
  const nlohmann::json& m = Reference()["models"][GetParam()];
  const std::string file = m["file"];
  const std::string path = testing::TestModel(file);
  if (path.empty()) GTEST_SKIP() << testing::TestModelMissing(file);
  auto model = Model::Load(path);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = Engine::Create(**model, MakeCpuBackend(2));
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (const auto& e : m["nll"]) {
    const auto ids = e["ids"].get<std::vector<int32_t>>();
    PerplexityOptions options;
    options.context = static_cast<int>(ids.size());
    options.stride = options.context;
    auto r = EvaluatePerplexity(**engine, ids, options);
    ASSERT_TRUE(r.ok()) << r.status();
    const double want = e["mean_nll"];
    EXPECT_EQ(r->tokens_scored, e["n_targets"].get<int64_t>());
    EXPECT_NEAR(r->mean_nll, want, 0.01 * want) << ids.size() << " tokens";
    RecordProperty("nll_" + std::to_string(ids.size()), std::to_string(r->mean_nll));
  }
  const int vocab = (*model)->config().vocab_size;
  for (const auto& g : m["greedy"]) {
    SCOPED_TRACE(g["prompt"].get<std::string>());
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = g["new_ids"].get<std::vector<int32_t>>();
    const auto margin = g["top1_top2_margin"].get<std::vector<double>>();
    auto seq = (*engine)->AddSequence();
    ASSERT_TRUE(seq.ok());
    std::vector<float> logits;
    ASSERT_TRUE((*engine)->Prefill(*seq, prompt, &logits).ok());
    size_t step = 0;
    for (; step < want.size(); ++step) {
      const int32_t got = static_cast<int32_t>(
          std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
      if (got != want[step]) {
        // Only at a near-tie for llama.cpp itself may the two differ; the texts part there.
        ASSERT_LT(margin[step], kNearTie)
            << "step " << step << ": kvshare " << got << ", llama.cpp " << want[step];
        break;
      }
      ASSERT_TRUE((*engine)->Prefill(*seq, {&got, 1}, &logits).ok());
    }
    std::printf("%s '%s': %zu of %zu greedy tokens equal before the texts part\n",
                GetParam().c_str(), g["prompt"].get<std::string>().c_str(), step, want.size());
    (*engine)->RemoveSequence(*seq);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, LlamaCppAgreementTest,
                         ::testing::Values("gemma3", "smollm2_q4_k_m", "smollm2_q5_k_m",
                                           "smollm2_q6_k", "smollm2_q8_0"));

}  // namespace
}  // namespace kvshare
