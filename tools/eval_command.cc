// kvshare eval: perplexity of a text file.
#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "common/engine/generate.h"
#include "common/util/file.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/session.h"

namespace kvshare::cli {

Runner RegisterEval(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string data;
    int64_t max_tokens = 16384;
    PerplexityOptions ppl;
    bool json = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand("eval", "Perplexity of a text file (BOS, then the text)");
  AddModelFlags(sub, &flags->model);
  sub->add_option("--data", flags->data, "Text file to score")->required();
  sub->add_option("--max-tokens", flags->max_tokens,
                  "How many tokens of the file to score (0 = all)")
      ->capture_default_str();
  sub->add_option("--context", flags->ppl.context, "Window length in tokens")->capture_default_str();
  sub->add_option("--stride", flags->ppl.stride,
                  "Window start step (tokens already scored are not scored again)")
      ->capture_default_str();
  sub->add_flag("--json", flags->json, "Print one JSON line instead of text");

  return [flags]() -> int {
    if (flags->max_tokens < 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--max-tokens %d must be >= 0", flags->max_tokens)));
    }
    auto text = ReadFileToString(flags->data);
    if (!text.ok()) return Fail(text.status());
    auto session = OpenSession(flags->model);
    if (!session.ok()) return Fail(session.status());
    const Tokenizer& tok = *session->tokenizer;
    std::vector<int32_t> ids = tok.Encode(*text, /*add_bos=*/false);
    if (ids.empty()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--data %s tokenises to no tokens", flags->data)));
    }
    if (flags->max_tokens > 0 && int64_t(ids.size()) > flags->max_tokens) {
      ids.resize(flags->max_tokens);
    }
    // BOS first (the document start); it is context, never a target.
    if (tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
    PerplexityOptions options = flags->ppl;
    options.strategy = session->strategy;
    ProgressBar bar("eval", "tokens");
    auto result = EvaluatePerplexity(*session->engine, ids, options,
                                     [&](int64_t done, int64_t total) { bar.Update(done, total); });
    bar.Finish();
    if (!result.ok()) return Fail(result.status());
    if (flags->json) {
      nlohmann::ordered_json j;
      j["data"] = flags->data;
      j["model_fingerprint"] = session->model->fingerprint();
      j["strategy_id"] = session->strategy->id();
      j["owning_layers"] = session->strategy->owning_layers();
      j["context"] = options.context;
      j["stride"] = options.stride;
      j["tokens"] = result->tokens_scored;
      j["mean_nll"] = result->mean_nll;
      j["perplexity"] = result->perplexity();
      std::cout << j.dump() << "\n";
    } else {
      std::cout << absl::StrFormat("tokens     %d\nmean_nll   %.6f\nperplexity %.4f\n",
                                   result->tokens_scored, result->mean_nll, result->perplexity());
    }
    return 0;
  };
}

}  // namespace kvshare::cli
