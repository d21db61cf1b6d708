#include "tools/drop_search_command.h"

#include <chrono>
#include <iostream>

#include "absl/strings/str_format.h"
#include "search_service/drop_search.h"
#include "tools/commands.h"
#include "tools/progress.h"

namespace kvshare::cli {

int RunDropSearch(const Session& session, const ProjectionSets& sets,
                  const DropSearchOptions& options, HeldoutSlice heldout, int threads,
                  const std::string& out) {
  const Model& model = *session.model;
  const ModelConfig& c = model.config();
  const auto start = std::chrono::steady_clock::now();
  std::cerr << absl::StrFormat(
      "search: %s, %d layers; drop the attention of the %d layers whose drop costs least%s%s; "
      "fit on %d x %d tokens (lines %d..%d), scored on %d x %d (lines %d..%d)\n",
      c.name, c.n_layers, options.target_layers,
      options.rank_with_substitutes ? " with its substitute" : "",
      options.substitutes ? ", each with a linear substitute" : "", sets.fit.samples,
      sets.fit.tokens, sets.fit.source_lines.front(), LastCalibrationLine(sets.fit),
      sets.score.samples, sets.score.tokens, sets.score.source_lines.front(),
      LastCalibrationLine(sets.score));
  auto calibrator = ProjectionCalibrator::Create(model, sets.fit, sets.score, threads);
  if (!calibrator.ok()) return Fail(calibrator.status());
  ProgressBar bar("drop search", "layers");
  DropSearchHooks hooks;
  hooks.progress = [&](int done, int total) { bar.Update(done, total); };
  auto result = SearchAttentionDrops(model, **calibrator, options, hooks);
  bar.Finish();
  if (!result.ok()) return Fail(result.status());
  std::cout << absl::StrFormat("%-6s %s\n", "layer", "scoring NLL increase when dropped alone");
  for (const auto& [cost, layer] : result->ranking) {
    std::cout << absl::StrFormat("%-6d %+.4f\n", layer, cost);
  }
  for (const auto& [ridge, increase] : result->tried) {
    std::cout << absl::StrFormat("ridge      %-8g scoring NLL %+.4f (bare drops %+.4f)\n", ridge,
                                 increase, result->bare_increase);
  }
  SharingStrategy strategy = *result->strategy;
  const auto& p = strategy.projections();
  const int64_t per_layer = c.KvBytesPerToken() / c.n_layers;
  std::cout << absl::StrFormat(
      "dropped    %s\n"
      "owning     %d of %d layers; KV %d -> %d bytes/token\n"
      "score      scoring NLL %+.4f%s\n"
      "time       %.1f s\n",
      strategy.CanonicalString(), strategy.owning_layers(), c.n_layers, c.KvBytesPerToken(),
      per_layer * strategy.owning_layers(), result->score_increase,
      p != nullptr ? absl::StrFormat("; substitutes ridge %g, %d x %d bytes", result->ridge,
                                     p->substitutes().size(), p->bytes_per_substitute())
                   : std::string(options.substitutes ? "; no substitute beat the bare drops" : ""),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  std::cerr << absl::StrFormat(
      "quality: held-out perplexity on %d tokens from line %d, %d-token windows, with and "
      "without the strategy\n",
      heldout.targets(), heldout.first_line, heldout.context);
  auto quality = MeasureHeldoutQuality(model, std::move(heldout), threads,
                                       std::make_shared<const SharingStrategy>(strategy), 0.0);
  if (!quality.ok()) return Fail(quality.status());
  RecordQuality(*quality, &strategy.provenance());
  std::cout << absl::StrFormat(
      "heldout    perplexity %.4f (unshared %.4f): NLL +%.4f nats/token on %d tokens in %d-token "
      "windows\n",
      quality->heldout_ppl(), quality->baseline_ppl(), quality->nll_increase(),
      quality->heldout_tokens, quality->context);
  absl::Status s = strategy.WriteFile(out);
  if (!s.ok()) return Fail(s);
  std::cout << absl::StrFormat("wrote      %s (strategy %s)\n", out, strategy.id());
  return 0;
}

}  // namespace kvshare::cli
