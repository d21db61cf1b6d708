// kvshare search: the KVSharer strategy search (DESIGN.md §1) for a model, written as a
// strategy JSON file.
#include <sys/stat.h>

#include <iostream>

#include "absl/strings/str_format.h"
#include "search_service/kvsharer_search.h"
#include "search_service/search_request.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/session.h"

namespace kvshare::cli {
namespace {

// The directory the strategy goes into must exist: checked before the search runs, so a typo
// in --out does not cost a search.
absl::Status CheckOutputPath(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("--out is empty; give a file to write");
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--out %s: directory %s does not exist", path, dir));
  }
  return absl::OkStatus();
}

void PrintResult(const ModelConfig& c, const KvSharerSearchResult& result, int target) {
  const GreedyResult& g = result.greedy;
  std::cout << absl::StrFormat("%-10s %10s %10s  %s\n", "pair", "distance", "score", "accepted");
  for (const PairTrial& t : g.trace) {
    std::cout << absl::StrFormat("%-10s %10.4f %10.6f  %s\n", absl::StrFormat("(%d, %d)", t.i, t.j),
                                 t.distance, t.score, t.accepted ? "yes" : "no");
  }
  const SharingStrategy& st = *result.strategy;
  const int64_t per_layer = c.KvBytesPerToken() / c.n_layers;
  const double kept = double(st.owning_layers()) / c.n_layers;
  std::cout << absl::StrFormat(
      "stop       %s: %d of %d target layers share; %d pairs scored, %d skipped (layer i "
      "already shares)\n"
      "kv_source  %s\n"
      "owning     %d of %d layers; KV %d -> %d bytes/token (%.1f%% of unshared, saves %.1f%%)\n"
      "score      %.6f (mean cosine similarity to the unshared model)\n"
      "time       %.2f s (unshared forward + distances %.2f s, greedy %.2f s)\n",
      StopReasonName(g.stop), st.sharing_layers(), target, g.trace.size(), g.pairs_skipped,
      st.CanonicalString(), st.owning_layers(), c.n_layers, c.KvBytesPerToken(),
      per_layer * st.owning_layers(), 100 * kept, 100 * (1 - kept), g.score, result.total_seconds,
      result.calibration_seconds, result.greedy_seconds);
}

}  // namespace

Runner RegisterSearch(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    SearchRequest request;
    double target_ratio = SearchRequest::kDefaultTargetRatio;
    int target_layers = 0;
    std::string out;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "search", "Find a KV sharing strategy (KVSharer: greedily share dissimilar layers)");
  AddModelFlags(sub, &flags->model, /*with_strategy=*/false);
  SearchRequest& r = flags->request;
  sub->add_option("--calibration", r.calibration_path,
                  "Calibration text: its first --samples lines of >= --tokens tokens")
      ->required();
  CLI::Option* ratio =
      sub->add_option("--target-ratio", flags->target_ratio, "Share round(R * layers) layers")
          ->capture_default_str();
  CLI::Option* layers =
      sub->add_option("--target-layers", flags->target_layers, "Share this many layers");
  ratio->excludes(layers);
  sub->add_option("--threshold", r.threshold,
                  "Accept a candidate whose mean cosine similarity to the unshared model's "
                  "final hidden states is above this; in (-1, 1]")
      ->capture_default_str();
  sub->add_option("--order", r.order,
                  "Pair order: dissimilar (the method), similar or random (ablations)")
      ->capture_default_str();
  sub->add_option("--seed", r.seed, "Shuffle seed for --order random")->capture_default_str();
  sub->add_option("--samples", r.calibration.samples, "Calibration samples (lines)")
      ->capture_default_str();
  sub->add_option("--tokens", r.calibration.tokens, "Tokens per calibration sample (BOS counted)")
      ->capture_default_str();
  sub->add_option("--out", flags->out, "Strategy JSON file to write")->required();

  return [flags, ratio, layers]() -> int {
    SearchRequest request = flags->request;
    if (layers->count() > 0) request.target_layers = flags->target_layers;
    if (ratio->count() > 0) request.target_ratio = flags->target_ratio;
    // Everything is checked before the first forward pass: the flags alone, then with the
    // model (layer count, context, calibration lines).
    absl::Status s = CheckOutputPath(flags->out);
    if (!s.ok()) return Fail(s);
    auto checked = CheckSearchRequest(request);
    if (!checked.ok()) return Fail(checked.status());
    auto session = OpenSession(flags->model, /*need_engine=*/false);
    if (!session.ok()) return Fail(session.status());
    const Model& model = *session->model;
    const ModelConfig& c = model.config();
    auto prepared = PrepareSearch(request, model, *session->tokenizer);
    if (!prepared.ok()) return Fail(prepared.status());
    const GreedyOptions& options = prepared->options;

    std::cerr << absl::StrFormat(
        "search: %s, %d layers; calibration %d x %d tokens (%s); order %s, threshold %g, "
        "target %d sharing layers\n",
        c.name, c.n_layers, prepared->calibration.samples, prepared->calibration.tokens,
        prepared->calibration.hash.substr(0, 16), PairOrderName(options.order), options.threshold,
        options.target_layers);
    auto backend = MakeCpuBackend(flags->model.threads);
    ProgressBar bar("search", "pairs");
    auto result = RunKvSharerSearch(
        model, *backend, prepared->calibration, options, [&](const GreedyProgress& p) {
          bar.Update(p.pair_index, p.pairs_total,
                     absl::StrFormat("pair (%d, %d), %d accepted, %d/%d layers share", p.pair.i,
                                     p.pair.j, p.accepted, p.sharing_layers, p.target_layers));
        });
    bar.Finish();
    if (!result.ok()) return Fail(result.status());
    PrintResult(c, *result, options.target_layers);
    s = result->strategy->WriteFile(flags->out);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrFormat("wrote      %s (strategy %s)\n", flags->out,
                                 result->strategy->id());
    return 0;
  };
}

}  // namespace kvshare::cli
