// kvshare strategy: write a hand-made sharing strategy file for a model, or a baseline
// pattern from the cross-layer sharing literature at a given number of sharing layers.
// kvshare rebind: re-bind a strategy file made before fingerprint v2 to the model's current
// fingerprint, after checking it was bound to the v1 fingerprint of the same weights.
#include <iostream>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/strategy/strategy_binding.h"
#include "search_service/baseline_strategies.h"
#include "tools/commands.h"
#include "tools/session.h"

namespace kvshare::cli {

// Parses "29:28,27:26" (layer:source pairs) into kv_source for n_layers layers.
absl::StatusOr<std::vector<int>> ParseSharePairs(const std::string& text, int n_layers) {
  std::vector<int> kv_source(n_layers);
  for (int l = 0; l < n_layers; ++l) kv_source[l] = l;
  if (text.empty()) return kv_source;
  for (absl::string_view pair : absl::StrSplit(text, ',')) {
    std::vector<absl::string_view> parts = absl::StrSplit(pair, ':');
    int layer = 0, source = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &layer) ||
        !absl::SimpleAtoi(parts[1], &source)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--share: '%s' is not LAYER:SOURCE (e.g. 29:28)", std::string(pair)));
    }
    if (layer < 0 || layer >= n_layers) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--share: layer %d is outside [0, %d) (the model has %d layers)", layer,
                          n_layers, n_layers));
    }
    kv_source[layer] = source;
  }
  return kv_source;
}

Runner RegisterStrategy(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string share;
    std::string baseline;
    int shared = 0;
    BaselineOptions baseline_options;
    std::string out;
    std::string note;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "strategy",
      "Write a KV sharing strategy file for a model: LAYER:SOURCE pairs or a baseline pattern");
  AddModelFlags(sub, &flags->model, /*with_strategy=*/false);
  CLI::Option* share =
      sub->add_option("--share", flags->share,
                      "Comma-separated LAYER:SOURCE pairs, e.g. 29:28,27:26 (empty = identity)");
  CLI::Option* baseline = sub->add_option(
      "--baseline", flags->baseline,
      "A pattern from the literature instead of --share: alternate (odd layers read the layer "
      "below), groups (adjacent layers share the lowest), middle (top layers read one middle "
      "layer), minicache (the deepest layers in adjacent pairs)");
  baseline->excludes(share);
  sub->add_option("--shared", flags->shared, "With --baseline: how many layers share");
  sub->add_option("--group-size", flags->baseline_options.group_size,
                  "With --baseline groups: layers per group")
      ->capture_default_str();
  sub->add_option("--out", flags->out, "Output JSON file")->required();
  sub->add_option("--note", flags->note, "Free text kept in the provenance");
  return [flags, baseline]() -> int {
    // Flags alone first: a bad pattern name costs no model load.
    std::optional<BaselinePattern> pattern;
    if (baseline->count() > 0) {
      auto p = ParseBaselinePattern(flags->baseline);
      if (!p.ok()) return Fail(p.status());
      pattern = *p;
    } else if (flags->shared != 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--shared %d needs --baseline NAME", flags->shared)));
    }
    auto model = LoadModelFromFlags(flags->model);
    if (!model.ok()) return Fail(model.status());
    const int n_layers = (*model)->config().n_layers;
    auto kv_source = pattern.has_value() ? BaselineStrategy(*pattern, n_layers, flags->shared,
                                                            flags->baseline_options)
                                         : ParseSharePairs(flags->share, n_layers);
    if (!kv_source.ok()) return Fail(kv_source.status());
    auto st = SharingStrategy::Create(*kv_source, (*model)->fingerprint());
    if (!st.ok()) return Fail(st.status());
    st->provenance().note = flags->note;
    if (pattern.has_value()) {
      StrategyProvenance& p = st->provenance();
      p.method = absl::StrCat("baseline:", BaselinePatternName(*pattern));
      p.target_layers = flags->shared;
      if (*pattern == BaselinePattern::kGroups && p.note.empty()) {
        p.note = absl::StrFormat("group size %d", flags->baseline_options.group_size);
      }
    }
    absl::Status s = st->WriteFile(flags->out);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrFormat("wrote %s: %d of %d layers own KV, id %s\n", flags->out,
                                 st->owning_layers(), st->n_layers(), st->id());
    return 0;
  };
}

Runner RegisterRebind(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string strategy;
    std::string out;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "rebind",
      "Re-bind a strategy file bound to a model's fingerprint v1 (weights only) to its current "
      "fingerprint (which also covers the tokenizer); refused for any other model's strategy");
  AddModelFlags(sub, &flags->model, /*with_strategy=*/false);
  sub->add_option("--strategy", flags->strategy, "Strategy JSON file to re-bind")->required();
  sub->add_option("--out", flags->out, "Output JSON file (default: rewrite --strategy)");
  return [flags]() -> int {
    auto st = SharingStrategy::ReadFile(flags->strategy);
    if (!st.ok()) return Fail(st.status());
    auto model = LoadModelFromFlags(flags->model);
    if (!model.ok()) return Fail(model.status());
    auto rebound = RebindStrategy(*st, **model);
    if (!rebound.ok()) {
      return Fail(absl::Status(
          rebound.status().code(),
          absl::StrCat("--strategy ", flags->strategy, ": ", rebound.status().message())));
    }
    if (rebound->model_fingerprint() == st->model_fingerprint()) {
      std::cout << absl::StrFormat("%s is already bound to fingerprint %s; nothing to do\n",
                                   flags->strategy, st->model_fingerprint());
      return 0;
    }
    const std::string out = flags->out.empty() ? flags->strategy : flags->out;
    absl::Status s = rebound->WriteFile(out);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrFormat("wrote %s: bound to fingerprint %s (was v1 %s), id %s\n", out,
                                 rebound->model_fingerprint(), st->model_fingerprint(),
                                 rebound->id());
    return 0;
  };
}

}  // namespace kvshare::cli
