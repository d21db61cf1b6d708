#include "tools/kv_plan_command.h"

#include <cmath>
#include <iostream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/engine/engine.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/kv_plan_runner.h"
#include "tools/progress.h"

namespace kvshare::cli {
namespace {

absl::StatusOr<std::vector<KvType>> ParsePlanTypes(const std::string& list) {
  std::vector<KvType> types;
  for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    auto t = ParseKvType(name);
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--plan-types %s: %s", list, t.status().message()));
    }
    types.push_back(*t);
  }
  if (types.empty()) {
    return absl::InvalidArgumentError("--plan-types is empty; give e.g. int8,int4");
  }
  return types;
}

}  // namespace

CLI::Option* AddPlanSearchFlags(CLI::App* search, PlanSearchFlags* flags) {
  CLI::Option* budget = search->add_option(
      "--max-ppl-increase", flags->max_ppl_increase,
      "Search a KV plan instead of a sharing target: per layer a KV type (--plan-types) and "
      "which cache it reads, saving the most bytes within this held-out perplexity increase, in "
      "percent (e.g. 2); trimmed on the held-out slice until it holds; for a pool of "
      "--block-tokens blocks (serve it with the same --block-tokens: 64 stores int4 in 0.297 of "
      "f16's bytes, 16 in 0.344)");
  search
      ->add_option("--plan-types", flags->plan_types,
                   "With --max-ppl-increase: the types a layer may be lowered to from f16 "
                   "(the default also tries every layer at k4v3 first, and at int4a when int4 "
                   "alone does not fit; a list given here is "
                   "used alone: e.g. int8,int4,k4v3 lets the scan lower layers to k4v3 one by "
                   "one, which needs calibration samples of many blocks to see its cost)")
      ->capture_default_str();
  search->add_flag("--no-share", flags->no_share,
                   "With --max-ppl-increase: choose precision only, never share a layer");
  return budget;
}

int RunPlanSearchCommand(const Session& session, const PreparedSearch& prepared,
                         HeldoutSlice heldout, const PlanSearchFlags& flags, int best_of,
                         int threads, int block_tokens, std::optional<cpu::Activations> activations,
                         const std::string& out) {
  const Model& model = *session.model;
  const ModelConfig& c = model.config();
  KvPlanOptions o;
  o.max_ppl_increase = flags.max_ppl_increase;
  o.share = !flags.no_share;
  o.share_best_of = best_of;
  o.block_tokens = block_tokens;
  if (activations.has_value()) o.activations = *activations;
  auto lower = ParsePlanTypes(flags.plan_types);
  if (!lower.ok()) return Fail(lower.status());
  o.lower_types = *lower;
  if (flags.plan_types == PlanSearchFlags{}.plan_types) {
    // The default offers what the model's heads can hold, and the k4v3 and int4a floors.
    KeepHoldableTypes(&o, {o.block_tokens, c.n_kv_heads, c.head_dim});
  } else {
    o.floor_types.clear();  // the types given, and no others
  }
  absl::Status s = ValidateKvPlanOptions(o);
  if (!s.ok()) return Fail(s);
  std::cerr << absl::StrFormat(
      "plan search: %s, %d layers; calibration %d x %d tokens; budget %g%% held-out perplexity "
      "(%.5f nats/token) on %d tokens; %d-token KV blocks; types f16 -> %s; %s; %s\n",
      c.name, c.n_layers, prepared.calibration.samples, prepared.calibration.tokens,
      o.max_ppl_increase, o.budget_nats(), heldout.targets(), o.block_tokens,
      [&] {
        std::vector<std::string> names;
        for (KvType t : o.lower_types) names.push_back(KvTypeName(t));
        for (KvType t : o.floor_types) names.push_back(absl::StrCat(KvTypeName(t), " (floor)"));
        return absl::StrJoin(names, ",");
      }(),
      o.share ? absl::StrFormat("sharing best of %d", o.share_best_of) : "no sharing",
      CalibrationActivationsNote(o.activations));
  std::cerr << "quality: the unshared fp32 model's held-out perplexity (the reference)\n";
  ProgressBar bar("plan", "runs");
  KvPlanHooks hooks;
  hooks.progress = [&](const std::string& phase, int done, int total) {
    bar.Update(done, std::max(total, done), phase);
  };
  auto result = RunKvPlanStrategySearch(
      model, prepared.calibration, heldout, threads, o, hooks,
      [&](double increase, int64_t tokens_read) {
        std::cerr << absl::StrFormat("\nheld-out   %+.4f nats/token", increase);
        if (tokens_read < heldout.targets()) {
          std::cerr << absl::StrFormat(
              " on the first %d of %d tokens: over the budget by more than 3 standard errors, "
              "stopped there",
              tokens_read, heldout.targets());
        }
        std::cerr << "\n";
      });
  bar.Finish();
  if (!result.ok()) return Fail(result.status());
  const KvPlanSearchResult& r = result->run.search;
  const SharingStrategy& strategy = *result->strategy;
  const StrategyProvenance& p = strategy.provenance();
  std::vector<std::string> actions;
  for (const PlanAction& a : r.actions) actions.push_back(PlanActionString(a));
  const double llama_cpp = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * 2;
  std::cout << absl::StrFormat(
      "plan       %s\n"
      "actions    %s\n"
      "KV         %.0f bytes/token (f16 everywhere %.0f, llama.cpp's default f16 %.0f: %.3f of "
      "it)\n"
      "calibration NLL +%.5f nats/token; %d runs\n"
      "time       %.1f s wall, %.1f s CPU (unshared forward + distances %.1f s), after the "
      "unshared model's held-out pass (%.1f s; the search service keeps it for later jobs)\n",
      strategy.CanonicalString(), actions.empty() ? "none" : absl::StrJoin(actions, " "),
      r.bytes_per_token, r.base_bytes_per_token, llama_cpp, r.bytes_per_token / llama_cpp,
      r.calibration_increase, r.calibration_runs, result->run.total_seconds,
      result->run.total_cpu_seconds, result->run.calibration_seconds, result->baseline_seconds);
  std::cout << absl::StrFormat(
      "heldout    perplexity %.4f (unshared %.4f): +%.2f%% (budget %g%%), NLL +%.4f nats/token on "
      "%d tokens in %d-token windows\n",
      p.heldout_ppl, p.baseline_ppl, 100 * (p.heldout_ppl / p.baseline_ppl - 1), o.max_ppl_increase,
      p.heldout_nll_increase(), p.heldout_tokens, p.heldout_context);
  s = strategy.WriteFile(out);
  if (!s.ok()) return Fail(s);
  std::cout << absl::StrFormat("wrote      %s (strategy %s)\n", out, strategy.id());
  return 0;
}

}  // namespace kvshare::cli
