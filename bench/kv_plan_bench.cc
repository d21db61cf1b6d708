// The KV memory / quality frontier (issue 17): for each model, held-out perplexity and KV bytes
// per token of every uniform KV type and of the plans the KV plan search finds within budgets of
// 1%, 2% and 5% (search_service/kv_plan_search.h), beside llama.cpp's default (f16 K and V in
// every layer: 2 * n_layers * n_kv_heads * head_dim * 2 bytes per token).
//
//   build/bench/kv_plan_bench [--models smollm2,stories] [--budgets 1,2,5|none] [--eval-tokens N]
//                             [--context N] [--threads N] [--block-tokens N] [--no-share]
//                             [--calibration-tokens N] [--activations f32|int8x2|int8]
//                             [--strategy FILE] [--json FILE]
//
// --strategy adds a row for a published plan (a strategy JSON of the first model; types f16
// where it has none); --budgets none skips the searches (the frontier of the uniform types and
// that plan only: what scripts/demo.sh prints).
// Held-out text: WikiText-2 test (SmolLM2) or the TinyStories sample (stories260K) from the line
// after the calibration lines (30 x 64 tokens, the search defaults; --calibration-tokens sets the
// 64, which an int4 plan needs at >= 2 x --block-tokens); perplexity in windows of
// --context tokens. The plan search trims on the same slice, so its plans meet the budget on it
// by construction; the search time includes those checks. --block-tokens: the paged pool's
// block size every row is measured and counted with (default 16, the engine's; int4 quantises
// K over a block, so larger blocks store fewer scales). Times are wall seconds on this machine
// and the process's CPU seconds (over all threads). --activations: how every forward takes its
// activations in quantized matmuls (default: the search's, int8x2; f32 is the exact mode).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/calibration.h"
#include "search_service/heldout_quality.h"
#include "search_service/kv_plan_runner.h"
#include "service_runtime/locate.h"

namespace kvshare::bench {
namespace {

struct Flags {
  std::vector<std::string> models = {"smollm2", "stories"};
  std::vector<double> budgets = {1, 2, 5};
  int eval_tokens = 16384;
  int context = 512;
  int threads = 2;
  int block_tokens = EngineOptions{}.block_tokens;
  int calibration_tokens = CalibrationOptions{}.tokens;
  bool share = true;
  bool early_reject = true;
  // How every forward (held-out rows and the searches) takes activations in quantized matmuls.
  cpu::Activations activations = KvPlanOptions{}.activations;
  std::string strategy;
  std::string json;
};

// "27 int4, 2 int8, 1 shared (7->3)"
std::string Describe(const KvPlan& plan) {
  std::map<std::string, int> count;
  std::vector<std::string> shares;
  for (size_t l = 0; l < plan.kv_source.size(); ++l) {
    if (plan.kv_source[l] == int(l)) {
      ++count[KvTypeName(plan.kv_types[l])];
    } else {
      shares.push_back(absl::StrFormat("%d->%d", l, plan.kv_source[l]));
    }
  }
  std::vector<std::string> parts;
  for (KvType type : kAllKvTypes) {
    const char* t = KvTypeName(type);
    if (count[t] > 0) parts.push_back(absl::StrFormat("%d %s", count[t], t));
  }
  if (!shares.empty()) {
    parts.push_back(absl::StrFormat("%d shared (%s)", shares.size(), absl::StrJoin(shares, " ")));
  }
  return absl::StrJoin(parts, ", ");
}

absl::StatusOr<std::shared_ptr<const SharingStrategy>> PlanStrategy(const Model& model,
                                                                    const KvPlan& plan) {
  auto s = KvPlanStrategy(model, plan);
  if (!s.ok()) return s.status();
  return std::make_shared<const SharingStrategy>(std::move(*s));
}

int RunModel(const Flags& flags, const std::string& name, nlohmann::json* out) {
  absl::StatusOr<std::string> path, text_path;
  if (name == "smollm2") {
    path = SmolLm2GgufPath();
    text_path = AssetPath("wikitext-2-raw-test.txt");
  } else if (name == "stories") {
    path = AssetPath("stories260K.bin");
    text_path = AssetPath("tinystories-sample.txt");
  } else {
    std::fprintf(stderr, "unknown model '%s' (smollm2, stories)\n", name.c_str());
    return 2;
  }
  if (!path.ok() || !text_path.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(),
                 std::string((!path.ok() ? path.status() : text_path.status()).message()).c_str());
    return 1;
  }
  auto model = Model::Load(*path);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  auto tokenizer = LoadTokenizerForModel(**model, "");
  if (!tokenizer.ok())
    return std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str()), 1;
  auto text = ReadFileToString(*text_path);
  if (!text.ok()) return std::fprintf(stderr, "%s\n", text.status().ToString().c_str()), 1;
  const ModelConfig& c = (*model)->config();
  CalibrationOptions co;
  co.tokens = flags.calibration_tokens;
  auto calibration = BuildCalibrationSet(*text, **tokenizer, co, *text_path);
  if (!calibration.ok()) {
    return std::fprintf(stderr, "%s\n", calibration.status().ToString().c_str()), 1;
  }
  HeldoutOptions ho;
  ho.tokens = flags.eval_tokens;
  ho.context = std::min(flags.context, c.max_seq_len);
  auto slice = CalibrationHeldoutSlice(*text, *calibration, **tokenizer, c, ho, *text_path);
  if (!slice.ok()) return std::fprintf(stderr, "%s\n", slice.status().ToString().c_str()), 1;
  auto meter = QualityMeter::Create(**model, *slice, flags.threads, nullptr, flags.block_tokens,
                                    flags.activations);
  if (!meter.ok()) return std::fprintf(stderr, "%s\n", meter.status().ToString().c_str()), 1;
  const double base_nll = (*meter)->baseline().mean_nll;

  KvGeometry g;  // the serving pool's blocks
  g.block_tokens = flags.block_tokens;
  g.n_kv_heads = c.n_kv_heads;
  g.head_dim = c.head_dim;
  const double llama_cpp = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * 2;
  const std::vector<KvType> types =
      HoldableKvTypes({std::begin(kAllKvTypes), std::end(kAllKvTypes)}, g);

  std::printf(
      "\n%s: %d layers, %d KV heads x %d; held-out %lld tokens in %d-token windows, "
      "unshared fp32 perplexity %.3f; %d-token KV blocks; llama.cpp f16 KV %.0f bytes/token; "
      "%s\n",
      c.name.c_str(), c.n_layers, c.n_kv_heads, c.head_dim, (long long)slice->targets(),
      slice->context, std::exp(base_nll), g.block_tokens, llama_cpp,
      CalibrationActivationsNote(flags.activations).c_str());
  std::printf("%-12s %-44s %10s %8s %10s %9s %8s %8s\n", "plan", "layers", "bytes/tok", "vs f16",
              "ppl", "ppl +%", "wall s", "cpu s");
  nlohmann::json rows = nlohmann::json::array();
  auto row = [&](const std::string& label, const std::string& layers, double bytes, double nll,
                 double wall, double cpu, nlohmann::json extra) {
    const double pct = 100.0 * (std::exp(nll - base_nll) - 1.0);
    std::printf("%-12s %-44s %10.0f %8.3f %10.3f %+8.2f%% %8.1f %8.1f\n", label.c_str(),
                layers.c_str(), bytes, bytes / llama_cpp, std::exp(nll), pct, wall, cpu);
    extra["plan"] = label;
    extra["layers"] = layers;
    extra["bytes_per_token"] = bytes;
    extra["vs_f16"] = bytes / llama_cpp;
    extra["heldout_ppl"] = std::exp(nll);
    extra["ppl_increase_percent"] = pct;
    extra["search_wall_s"] = wall;
    extra["search_cpu_s"] = cpu;
    rows.push_back(extra);
  };
  std::vector<int> identity(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) identity[l] = l;
  for (KvType t : types) {
    KvPlan plan{identity, std::vector<KvType>(c.n_layers, t)};
    auto strategy = PlanStrategy(**model, plan);
    if (!strategy.ok())
      return std::fprintf(stderr, "%s\n", strategy.status().ToString().c_str()), 1;
    auto ppl = (*meter)->Perplexity(*strategy);
    if (!ppl.ok()) return std::fprintf(stderr, "%s\n", ppl.status().ToString().c_str()), 1;
    row(KvTypeName(t), absl::StrFormat("%d %s", c.n_layers, KvTypeName(t)),
        KvPlanBytesPerToken(g, plan), ppl->mean_nll, 0, 0, nlohmann::json::object());
  }
  if (!flags.strategy.empty() && name == flags.models.front()) {
    auto file = SharingStrategy::ReadFile(flags.strategy);
    if (!file.ok()) return std::fprintf(stderr, "%s\n", file.status().ToString().c_str()), 1;
    absl::Status valid = file->ValidateFor(c, (*model)->fingerprint());
    if (!valid.ok()) return std::fprintf(stderr, "%s\n", valid.ToString().c_str()), 1;
    KvPlan plan{file->kv_source(), {}};
    for (int l = 0; l < c.n_layers; ++l) plan.kv_types.push_back(file->kv_type(l, KvType::kF16));
    auto strategy = PlanStrategy(**model, plan);
    if (!strategy.ok())
      return std::fprintf(stderr, "%s\n", strategy.status().ToString().c_str()), 1;
    auto ppl = (*meter)->Perplexity(*strategy);
    if (!ppl.ok()) return std::fprintf(stderr, "%s\n", ppl.status().ToString().c_str()), 1;
    nlohmann::json extra;
    extra["strategy_id"] = file->id();
    row("published", Describe(plan), KvPlanBytesPerToken(g, plan), ppl->mean_nll, 0, 0, extra);
  }
  KvPlanOptions search;
  search.activations = flags.activations;
  auto backend = MakeCpuBackend(KvPlanBackendOptions(flags.threads, search));
  for (double budget : flags.budgets) {
    KvPlanOptions o = search;
    o.max_ppl_increase = budget;
    KeepHoldableTypes(&o, g);
    o.share = flags.share;
    o.early_reject = flags.early_reject;
    o.block_tokens = g.block_tokens;
    HeldoutIncreaseFn heldout = [&](const KvPlan& plan,
                                    double reject_above) -> absl::StatusOr<double> {
      auto strategy = PlanStrategy(**model, plan);
      if (!strategy.ok()) return strategy.status();
      const EarlyReject reject{reject_above};
      auto ppl = (*meter)->Perplexity(*strategy, std::isfinite(reject_above) ? &reject : nullptr);
      if (!ppl.ok()) return ppl.status();
      return NllIncreaseOver(*ppl, (*meter)->baseline());
    };
    // Each search starts from a meter with no kept window prefixes, as a search of its own
    // does (the uniform rows and the searches before would otherwise have left them).
    (*meter)->DropKeptPrefixes();
    // The search's timeline on stderr: each phase's first step and each held-out check.
    const auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    std::string last_phase;
    KvPlanHooks hooks;
    hooks.progress = [&](const std::string& phase, int, int) {
      if (phase == last_phase) return;
      last_phase = phase;
      std::fprintf(stderr, "  budget %g%%: %7.1f s  %s\n", budget, elapsed(), phase.c_str());
    };
    HeldoutIncreaseFn timed = [&](const KvPlan& plan,
                                  double reject_above) -> absl::StatusOr<double> {
      const double start = elapsed();
      auto h = heldout(plan, reject_above);
      if (h.ok()) {
        std::fprintf(stderr, "  budget %g%%: %7.1f s  held-out check %s: %+.4f nats (%.1f s)\n",
                     budget, elapsed(), Describe(plan).c_str(), *h, elapsed() - start);
      }
      return h;
    };
    auto run = RunKvPlanSearch(**model, *backend, *calibration, g.block_tokens, o, timed, hooks);
    if (!run.ok()) return std::fprintf(stderr, "%s\n", run.status().ToString().c_str()), 1;
    const KvPlanSearchResult& r = run->search;
    nlohmann::json extra;
    extra["budget_percent"] = budget;
    extra["calibration_nll_increase"] = r.calibration_increase;
    extra["heldout_checks"] = r.heldout_checks;
    extra["trimmed_actions"] = r.trimmed_actions;
    extra["calibration_runs"] = r.calibration_runs;
    std::vector<std::string> actions;
    for (const PlanAction& a : r.actions) actions.push_back(PlanActionString(a));
    extra["actions"] = actions;
    row(absl::StrFormat("budget %g%%", budget), Describe(r.plan), r.bytes_per_token,
        base_nll + r.heldout_increase, run->total_seconds, run->total_cpu_seconds, extra);
  }
  (*out)[name] = rows;
  return 0;
}

int Main(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--json") {
      flags.json = next();
    } else if (a == "--threads") {
      flags.threads = std::atoi(next().c_str());
    } else if (a == "--calibration-tokens") {
      flags.calibration_tokens = std::atoi(next().c_str());
    } else if (a == "--block-tokens") {
      flags.block_tokens = std::atoi(next().c_str());
    } else if (a == "--eval-tokens") {
      flags.eval_tokens = std::atoi(next().c_str());
    } else if (a == "--context") {
      flags.context = std::atoi(next().c_str());
    } else if (a == "--models") {
      flags.models = absl::StrSplit(next(), ',');
    } else if (a == "--no-share") {
      flags.share = false;
    } else if (a == "--no-early-reject") {
      flags.early_reject = false;
    } else if (a == "--activations") {
      const std::string v = next();
      const std::optional<cpu::Activations> given = cpu::ActivationsFromName(v);
      if (!given.has_value()) {
        std::fprintf(stderr, "--activations '%s': must be f32, int8x2 or int8\n", v.c_str());
        return 2;
      }
      flags.activations = *given;
    } else if (a == "--strategy") {
      flags.strategy = next();
    } else if (a == "--budgets") {
      flags.budgets.clear();
      const std::string list = next();
      if (list == "none") continue;
      for (absl::string_view s : absl::StrSplit(list, ',')) {
        double b = 0;
        if (!absl::SimpleAtod(s, &b) || !(b > 0)) {
          std::fprintf(stderr, "--budgets: '%s' is not a percentage > 0\n", std::string(s).c_str());
          return 2;
        }
        flags.budgets.push_back(b);
      }
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--models smollm2,stories] [--budgets 1,2,5|none] [--eval-tokens N] "
          "[--context N] [--threads N] [--block-tokens N] [--calibration-tokens N] [--no-share] "
          "[--no-early-reject] [--activations f32|int8x2|int8] [--strategy FILE] [--json FILE]\n"
          "  --no-early-reject: held-out checks and sharing candidates read all of their text\n"
          "  --activations: how every forward takes activations in quantized matmuls (default "
          "int8x2, the search's; f32: exact)\n",
          argv[0]);
      return 2;
    }
  }
  if (flags.eval_tokens < 64 || flags.context < 16 || flags.threads < 1 || flags.block_tokens < 1 ||
      flags.block_tokens > 1024) {
    std::fprintf(stderr,
                 "--eval-tokens must be >= 64, --context >= 16, --threads >= 1, --block-tokens in "
                 "[1, 1024]\n");
    return 2;
  }
  nlohmann::json out;
  out["threads"] = flags.threads;
  out["calibration_tokens"] = flags.calibration_tokens;
  out["block_tokens"] = flags.block_tokens;
  out["activations"] = cpu::ActivationsName(flags.activations);
  for (const std::string& name : flags.models) {
    const int rc = RunModel(flags, name, &out);
    if (rc != 0) return rc;
  }
  if (!flags.json.empty()) {
    std::FILE* f = std::fopen(flags.json.c_str(), "w");
    if (f == nullptr) return std::fprintf(stderr, "cannot write %s\n", flags.json.c_str()), 1;
    std::fprintf(f, "%s\n", out.dump(2).c_str());
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace kvshare::bench

int main(int argc, char** argv) { return kvshare::bench::Main(argc, argv); }
