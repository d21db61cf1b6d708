// kvshare eval: perplexity of a text file, with one strategy or several side by side.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/engine/perplexity.h"
#include "common/strategy/strategy_binding.h"
#include "common/util/file.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/session.h"

namespace kvshare::cli {

namespace {

// One row of the side-by-side table.
struct EvalRow {
  std::string label;  // the file, or "(unshared)"
  std::shared_ptr<const SharingStrategy> strategy;
  PerplexityResult result;
};

void PrintJsonLine(const std::string& data, const Session& session, const PerplexityOptions& o,
                   const EvalRow& row, const PerplexityResult* baseline) {
  nlohmann::ordered_json j;
  j["data"] = data;
  j["model_fingerprint"] = session.model->fingerprint();
  if (baseline != nullptr) j["strategy"] = row.label;
  j["strategy_id"] = row.strategy->id();
  j["owning_layers"] = row.strategy->owning_layers();
  j["kv_type"] = KvTypeName(session.engine->kv_cache().geometry().type);
  j["context"] = o.context;
  j["stride"] = o.stride;
  j["tokens"] = row.result.tokens_scored;
  j["mean_nll"] = row.result.mean_nll;
  j["perplexity"] = row.result.perplexity();
  if (baseline != nullptr) j["nll_increase"] = row.result.mean_nll - baseline->mean_nll;
  std::cout << j.dump() << "\n";
}

// The strategies side by side: method, memory, perplexity, the NLL increase over the unshared
// model, and the held-out perplexity the file recorded when it was made (if it did).
void PrintTable(const ModelConfig& c, const std::vector<EvalRow>& rows, int64_t tokens) {
  size_t width = 10, method_width = 8;
  for (const EvalRow& r : rows) {
    width = std::max(width, r.label.size());
    method_width = std::max(method_width, r.strategy->provenance().method.size());
  }
  std::cout << absl::StrFormat("%-*s %-*s %-10s %7s %6s %10s %11s %9s %9s\n", int(width),
                               "strategy", int(method_width), "method", "order", "owning", "KV %",
                               "mean_nll", "perplexity", "dNLL", "recorded");
  const double base = rows.front().result.mean_nll;
  for (const EvalRow& r : rows) {
    const StrategyProvenance& p = r.strategy->provenance();
    std::cout << absl::StrFormat(
        "%-*s %-*s %-10s %4d/%-2d %5.1f%% %10.5f %11.4f %+9.4f %9s\n", int(width), r.label,
        int(method_width), p.method.empty() ? "-" : p.method, p.order.empty() ? "-" : p.order,
        r.strategy->owning_layers(), c.n_layers, 100.0 * r.strategy->owning_layers() / c.n_layers,
        r.result.mean_nll, r.result.perplexity(), r.result.mean_nll - base,
        p.has_quality() ? absl::StrFormat("%.4f", p.heldout_ppl) : std::string("-"));
  }
  std::cout << absl::StrFormat(
      "(%d tokens; dNLL: nats/token over the first row; recorded: the held-out perplexity the "
      "file carries, measured when it was made)\n",
      tokens);
}

}  // namespace

Runner RegisterEval(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::vector<std::string> strategies;
    std::string data;
    int64_t max_tokens = 16384;
    PerplexityOptions ppl;
    bool json = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Perplexity of a text file (BOS, then the text); several --strategy files side by side");
  AddModelFlags(sub, &flags->model, /*with_strategy=*/false);
  sub->add_option("--strategy", flags->strategies,
                  "KV sharing strategy JSON file (default: identity, no sharing); repeat it to "
                  "compare several in one table, beside the unshared model");
  sub->add_option("--data", flags->data, "Text file to score")->required();
  sub->add_option("--max-tokens", flags->max_tokens,
                  "How many tokens of the file to score (0 = all)")
      ->capture_default_str();
  sub->add_option("--context", flags->ppl.context, "Window length in tokens")
      ->capture_default_str();
  sub->add_option("--stride", flags->ppl.stride,
                  "Window start step (tokens already scored are not scored again)")
      ->capture_default_str();
  sub->add_flag("--json", flags->json, "Print one JSON line (per strategy) instead of text");

  return [flags]() -> int {
    if (flags->max_tokens < 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--max-tokens %d must be >= 0", flags->max_tokens)));
    }
    auto text = ReadFileToString(flags->data);
    if (!text.ok()) return Fail(text.status());
    ModelFlags model_flags = flags->model;
    if (flags->strategies.size() == 1) model_flags.strategy = flags->strategies[0];
    auto session = OpenSession(model_flags);
    if (!session.ok()) return Fail(session.status());
    // Every file is read and checked against the model before any token is scored.
    std::vector<EvalRow> rows;
    if (flags->strategies.size() <= 1) {
      rows.push_back(
          {flags->strategies.empty() ? "(unshared)" : flags->strategies[0], session->strategy, {}});
    } else {
      rows.push_back({"(unshared)",
                      std::make_shared<const SharingStrategy>(SharingStrategy::Identity(
                          session->model->config().n_layers, session->model->fingerprint())),
                      {}});
      for (const std::string& path : flags->strategies) {
        auto st = SharingStrategy::ReadFile(path);
        if (!st.ok()) return Fail(st.status());
        absl::Status s = ValidateStrategyForModel(*st, *session->model);
        if (!s.ok()) {
          return Fail(absl::Status(s.code(), absl::StrCat("--strategy ", path, ": ", s.message())));
        }
        rows.push_back({path, std::make_shared<const SharingStrategy>(std::move(*st)), {}});
      }
    }
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
    for (size_t r = 0; r < rows.size(); ++r) {
      options.strategy = rows[r].strategy;
      ProgressBar bar(rows.size() == 1 ? "eval" : absl::StrFormat("eval %d/%d", r + 1, rows.size()),
                      "tokens");
      auto result =
          EvaluatePerplexity(*session->engine, ids, options,
                             [&](int64_t done, int64_t total) { bar.Update(done, total); });
      bar.Finish();
      if (!result.ok()) return Fail(result.status());
      rows[r].result = *result;
    }
    if (rows.size() == 1) {
      if (flags->json) {
        PrintJsonLine(flags->data, *session, options, rows[0], nullptr);
      } else {
        const PerplexityResult& r = rows[0].result;
        std::cout << absl::StrFormat(
            "tokens     %d\nmean_nll   %.6f\nperplexity %.4f\nkv_type    %s\n", r.tokens_scored,
            r.mean_nll, r.perplexity(), KvTypeName(session->engine->kv_cache().geometry().type));
      }
      return 0;
    }
    if (flags->json) {
      for (const EvalRow& row : rows) {
        PrintJsonLine(flags->data, *session, options, row, &rows.front().result);
      }
    } else {
      PrintTable(session->model->config(), rows, rows.front().result.tokens_scored);
    }
    return 0;
  };
}

}  // namespace kvshare::cli
