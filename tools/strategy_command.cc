// kvshare strategy: write a hand-made sharing strategy file for a model.
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
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
      return absl::InvalidArgumentError(absl::StrFormat(
          "--share: '%s' is not LAYER:SOURCE (e.g. 29:28)", std::string(pair)));
    }
    if (layer < 0 || layer >= n_layers) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--share: layer %d is outside [0, %d) (the model has %d layers)", layer, n_layers,
          n_layers));
    }
    kv_source[layer] = source;
  }
  return kv_source;
}

Runner RegisterStrategy(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string share;
    std::string out;
    std::string note;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "strategy", "Write a hand-made KV sharing strategy file for a model (LAYER:SOURCE pairs)");
  AddModelFlags(sub, &flags->model, /*with_strategy=*/false);
  sub->add_option("--share", flags->share,
                  "Comma-separated LAYER:SOURCE pairs, e.g. 29:28,27:26 (empty = identity)");
  sub->add_option("--out", flags->out, "Output JSON file")->required();
  sub->add_option("--note", flags->note, "Free text kept in the provenance");
  return [flags]() -> int {
    auto model = LoadModelFromFlags(flags->model);
    if (!model.ok()) return Fail(model.status());
    auto kv_source = ParseSharePairs(flags->share, (*model)->config().n_layers);
    if (!kv_source.ok()) return Fail(kv_source.status());
    auto st = SharingStrategy::Create(*kv_source, (*model)->fingerprint());
    if (!st.ok()) return Fail(st.status());
    st->provenance().note = flags->note;
    absl::Status s = st->WriteFile(flags->out);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrFormat("wrote %s: %d of %d layers own KV, id %s\n", flags->out,
                                 st->owning_layers(), st->n_layers(), st->id());
    return 0;
  };
}

}  // namespace kvshare::cli
