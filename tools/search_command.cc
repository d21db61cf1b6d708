// kvshare search: the KVSharer strategy search (docs/METHOD.md §3) for a model, written as a
// strategy JSON file.
#include <sys/stat.h>

#include <cstdint>
#include <iostream>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/util/file.h"
#include "search_service/drop_search.h"
#include "search_service/heldout_quality.h"
#include "search_service/projection_fit.h"
#include "search_service/projection_sets.h"
#include "search_service/search_request.h"
#include "search_service/strategy_search.h"
#include "tools/commands.h"
#include "tools/drop_search_command.h"
#include "tools/kv_plan_command.h"
#include "tools/progress.h"
#include "tools/search_client.h"
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

// Where the strategy's quality is measured (heldout_quality.h).
struct HeldoutFlags {
  std::string path;  // empty: the calibration text, after the calibration lines
  HeldoutOptions options;
};

absl::Status CheckHeldoutFlags(const HeldoutFlags& f) {
  if (f.options.tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--heldout-tokens %d must be >= 1", f.options.tokens));
  }
  if (f.options.context < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--heldout-context %d must be >= 2", f.options.context));
  }
  return absl::OkStatus();
}

// The held-out slice: of --heldout from its first line, or of the calibration text from the
// line after the last calibration line (also when --heldout names the calibration file).
absl::StatusOr<HeldoutSlice> PrepareHeldout(const HeldoutFlags& f,
                                            const std::string& calibration_path,
                                            const std::string& calibration_text,
                                            const CalibrationSet& calibration,
                                            const Tokenizer& tokenizer, const ModelConfig& c) {
  if (f.path.empty() || f.path == calibration_path) {
    return CalibrationHeldoutSlice(
        calibration_text, calibration, tokenizer, c, f.options,
        f.path.empty() ? "--calibration " + calibration_path : "--heldout " + f.path);
  }
  if (f.options.context > c.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--heldout-context %d exceeds the context of '%s' (%d)", f.options.context,
                        c.name, c.max_seq_len));
  }
  auto text = ReadFileToString(f.path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrFormat("--heldout: %s", text.status().message()));
  }
  return BuildHeldoutSlice(*text, tokenizer, 0, f.options, "--heldout " + f.path);
}

absl::StatusOr<StrategyQuality> MeasureHeldout(const Model& model, HeldoutSlice slice, int threads,
                                               std::shared_ptr<const SharingStrategy> strategy,
                                               double calibration_score) {
  std::cerr << absl::StrFormat(
      "quality: held-out perplexity on %d tokens from line %d, %d-token windows, with and "
      "without the strategy\n",
      slice.targets(), slice.first_line, slice.context);
  return MeasureHeldoutQuality(model, std::move(slice), threads, std::move(strategy),
                               calibration_score);
}

void PrintQuality(const StrategyQuality& q) {
  std::cout << absl::StrFormat(
      "heldout    perplexity %.4f (unshared %.4f): NLL +%.4f nats/token on %d tokens in %d-token "
      "windows\n",
      q.heldout_ppl(), q.baseline_ppl(), q.nll_increase(), q.heldout_tokens, q.context);
}

void PrintResult(const ModelConfig& c, const StrategySearchResult& result, int target) {
  const GreedyResult& g = result.selection.greedy;
  std::cout << absl::StrFormat("%-10s %5s %10s %10s  %s\n", "pair", "step", "distance", "score",
                               "outcome");
  for (size_t t = 0; t < g.trace.size(); ++t) {
    const PairTrial& p = g.trace[t];
    std::cout << absl::StrFormat("%-10s %5d %10.4f %10.6f  %s\n",
                                 absl::StrFormat("(%d, %d)", p.i, p.j), result.selection.step[t],
                                 p.distance, p.score,
                                 TrialOutcomeName(result.selection.outcome[t]));
  }
  const SharingStrategy& st = *result.strategy;
  const int64_t per_layer = c.KvBytesPerToken() / c.n_layers;
  const double kept = double(st.owning_layers()) / c.n_layers;
  std::cout << absl::StrFormat(
      "stop       %s: %d of %d target layers share; %d candidates scored, %d skipped (layer i "
      "already shares)\n"
      "kv_source  %s\n"
      "owning     %d of %d layers; KV %d -> %d bytes/token (%.1f%% of unshared, saves %.1f%%)\n"
      "score      %.6f (%s)\n"
      "cosine     %.6f (mean cosine similarity of final hidden states to the unshared model)\n"
      "time       %.2f s (unshared forward + distances %.2f s, selection %.2f s)\n",
      StopReasonName(g.stop), st.sharing_layers(), target, g.trace.size(), g.pairs_skipped,
      st.CanonicalString(), st.owning_layers(), c.n_layers, c.KvBytesPerToken(),
      per_layer * st.owning_layers(), 100 * kept, 100 * (1 - kept), g.score,
      st.provenance().method == "nll" ? "minus the calibration NLL increase, nats/token"
                                      : "mean cosine similarity to the unshared model",
      result.calibration_score, result.total_seconds, result.calibration_seconds,
      result.greedy_seconds);
}

}  // namespace

Runner RegisterSearch(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    SearchRequest request;
    double target_ratio = SearchRequest::kDefaultTargetRatio;
    int target_layers = 0;
    std::string out;
    RemoteSearchFlags remote;  // --server: run as a job of a kvshare-search
    double max_nll_increase = 0;
    std::string order;  // --order, --best-of and --lazy when given (else the method's defaults)
    int best_of = 1;
    bool lazy = false;
    HeldoutFlags heldout;
    bool calibrate_projections = false;
    bool calibrated_scoring = false;
    bool drop_attention = false;
    bool no_substitutes = false;
    bool rank_with_substitutes = false;
    int fit_window = 0;
    std::string projection_type = "f16";
    std::vector<double> ridges = DefaultRidges();
    PlanSearchFlags plan;  // --max-ppl-increase: the KV plan search
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "search",
      "Find a KV sharing strategy (greedy layer sharing: the best measured rule by default, the "
      "KVSharer paper's with --method kvsharer) or, with --max-ppl-increase, a KV plan");
  AddModelFlags(sub, &flags->model, /*with_strategy=*/false);
  SearchRequest& r = flags->request;
  sub->add_option("--calibration", r.calibration_path,
                  "Calibration text: its first --samples lines of >= --tokens tokens");
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
  CLI::Option* order =
      sub->add_option("--order", flags->order,
                      "Pair order: dissimilar (the paper's), similar or random (default: similar "
                      "with --method nll, dissimilar with --method kvsharer)");
  sub->add_option("--seed", r.seed, "Shuffle seed for --order random")->capture_default_str();
  sub->add_option("--samples", r.calibration.samples, "Calibration samples (lines)")
      ->capture_default_str();
  sub->add_option("--tokens", r.calibration.tokens, "Tokens per calibration sample (BOS counted)")
      ->capture_default_str();
  sub->add_option("--method", r.method,
                  "Selection rule: nll (calibration NLL increase below --max-nll-increase; the "
                  "best rule measured, docs/METHOD.md §5) or kvsharer (the paper: cosine above "
                  "--threshold; alone, the paper's search exactly)")
      ->capture_default_str();
  sub->add_option("--best-of", flags->best_of,
                  "Score the next K candidates of the order per step and accept the best (1 = "
                  "the first acceptable one, the paper's rule; default: 8 with --method nll or "
                  "--max-ppl-increase, 1 with --method kvsharer)");
  CLI::Option* lazy = sub->add_flag(
      "--lazy,!--no-lazy", flags->lazy,
      "With --best-of: rescore only the candidate with the best last score until it is current "
      "(fewer forward passes; exact when scores only fall). Default: on with --method nll, off "
      "with --method kvsharer");
  CLI::Option* max_nll = sub->add_option(
      "--max-nll-increase", flags->max_nll_increase,
      "--method nll: accept a candidate while its calibration NLL is less than R nats/token "
      "above the unshared model's (no cap when not given)");
  sub->add_option("--heldout", flags->heldout.path,
                  "Held-out text the strategy's quality is measured on (default: the "
                  "calibration text from the line after the last calibration line)");
  sub->add_option("--heldout-tokens", flags->heldout.options.tokens,
                  "Held-out tokens scored (perplexity with and without the strategy)")
      ->capture_default_str();
  sub->add_option("--heldout-context", flags->heldout.options.context,
                  "Held-out window length in tokens")
      ->capture_default_str();
  sub->add_option("--out", flags->out, "Strategy JSON file to write");
  sub->add_flag("--calibrate-projections", flags->calibrate_projections,
                "Refit each sharing layer's output projection (ridge regression on calibration "
                "text after the held-out slice; strength chosen on a separate scoring set) and "
                "write it beside --out (projections-<sha256>.bin)");
  sub->add_flag("--calibrated-scoring", flags->calibrated_scoring,
                "With --method nll --calibrate-projections: score each candidate with its own "
                "fitted projections on the scoring set (slower: a fit per candidate)");
  sub->add_flag("--drop-attention", flags->drop_attention,
                "Instead of sharing caches, drop the attention of the --target-layers layers "
                "whose drop costs least on the scoring set (no KV, no attention compute), each "
                "with a linear substitute fitted like the projections (docs/METHOD.md §7)");
  sub->add_flag("--rank-with-substitutes", flags->rank_with_substitutes,
                "With --drop-attention: rank each drop by its cost with its own substitute "
                "(fitted alone) instead of bare; measured better on Gemma 3, worse on SmolLM2 "
                "at 8 and 12 layers (docs/METHOD.md §7)");
  sub->add_flag("--no-substitutes", flags->no_substitutes,
                "With --drop-attention: bare drops (the layer's attention adds nothing)");
  CLI::Option* fit_window = sub->add_option(
      "--fit-window", flags->fit_window,
      "Fit and score projections and substitutes on contiguous windows of this many "
      "tokens (about 4,608 and 2,048 tokens in all); 0: one 128-token line per "
      "sample. Default: 0, and min(512, context) with --drop-attention");
  sub->add_option("--projection-type", flags->projection_type,
                  "Stored type of calibrated projections: f16 or f32")
      ->capture_default_str();
  sub->add_option("--ridge", flags->ridges,
                  "Ridge strengths tried for calibrated projections (relative to the mean "
                  "squared attention output)")
      ->capture_default_str();
  AddRemoteSearchFlags(sub, &flags->remote);
  CLI::Option* plan_budget = AddPlanSearchFlags(sub, &flags->plan);
  plan_budget->excludes(ratio)->excludes(layers);
  CLI::Option* best_of = sub->get_option("--best-of");

  return [flags, ratio, layers, max_nll, plan_budget, order, best_of, lazy, fit_window]() -> int {
    SearchRequest request = flags->request;
    if (order->count() > 0) request.order = flags->order;
    if (best_of->count() > 0) request.best_of = flags->best_of;
    if (lazy->count() > 0) request.lazy = flags->lazy;
    if (plan_budget->count() > 0) {
      request.max_ppl_increase = flags->plan.max_ppl_increase;
      request.kv_block_tokens = flags->model.block_tokens;
    }
    if (layers->count() > 0) request.target_layers = flags->target_layers;
    if (ratio->count() > 0) request.target_ratio = flags->target_ratio;
    if (max_nll->count() > 0) request.max_nll_increase = flags->max_nll_increase;
    if (flags->drop_attention) request.drop_attention = true;
    if (flags->no_substitutes) request.drop_substitutes = false;
    request.activations = ActivationsFlag(flags->model);
    if (!flags->remote.server.empty()) {
      if (plan_budget->count() > 0) {
        if (flags->plan.no_share || flags->plan.plan_types != PlanSearchFlags{}.plan_types) {
          return Fail(absl::InvalidArgumentError(
              "--no-share and --plan-types: the search service plans with its defaults (int8 "
              "and int4 where the heads allow, with sharing); leave them out with --server"));
        }
      }
      if (flags->calibrate_projections) {
        return Fail(absl::InvalidArgumentError(
            "--calibrate-projections: the search service does not fit projections yet; run the "
            "search locally (leave --server out) and publish its file"));
      }
      // The server measures the quality on the calibration text it searched with.
      if (!flags->heldout.path.empty()) {
        return Fail(absl::InvalidArgumentError(
            "--heldout: with --server the quality is measured on the calibration text after the "
            "calibration lines; leave --heldout out"));
      }
      if (flags->heldout.options.tokens < 0 || flags->heldout.options.tokens > INT32_MAX) {
        return Fail(absl::InvalidArgumentError(
            absl::StrFormat("--heldout-tokens %d must be in [0, %d] with --server (0 = do not "
                            "measure)",
                            flags->heldout.options.tokens, INT32_MAX)));
      }
      return RunRemoteSearchCommand(flags->remote, flags->model.model, request,
                                    flags->heldout.options, flags->out);
    }
    if (absl::Status s = CheckNoRemoteFlags(flags->remote); !s.ok()) return Fail(s);
    // Everything is checked before the first forward pass: the flags alone, then with the
    // model (layer count, context, calibration lines).
    absl::Status s = CheckOutputPath(flags->out);
    if (!s.ok()) return Fail(s);
    auto checked = CheckSearchRequest(request);
    if (!checked.ok()) return Fail(checked.status());
    s = CheckHeldoutFlags(flags->heldout);
    if (!s.ok()) return Fail(s);
    // Calibration and the search read K/V and hidden states on the host (ForwardObserver).
    if (flags->model.device != "auto" && flags->model.device != "cpu") {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--device %s: the strategy search runs on the CPU only (auto or cpu)",
                          flags->model.device)));
    }
    auto session = OpenSession(flags->model, /*need_engine=*/false);
    if (!session.ok()) return Fail(session.status());
    const Model& model = *session->model;
    const ModelConfig& c = model.config();
    auto prepared = PrepareSearch(request, model, *session->tokenizer);
    if (!prepared.ok()) return Fail(prepared.status());
    const GreedyOptions& options = prepared->options;
    // The held-out slice is cut before the search, so a text too short for it costs nothing.
    auto heldout = PrepareHeldout(flags->heldout, request.calibration_path, *checked,
                                  prepared->calibration, *session->tokenizer, c);
    if (!heldout.ok()) return Fail(heldout.status());
    if (flags->drop_attention && (flags->calibrate_projections || flags->calibrated_scoring)) {
      return Fail(absl::InvalidArgumentError(
          "--drop-attention: no sharing layer to calibrate; leave --calibrate-projections and "
          "--calibrated-scoring out (the substitutes are fitted unless --no-substitutes)"));
    }
    if (plan_budget->count() > 0) {
      if (flags->calibrate_projections) {
        return Fail(absl::InvalidArgumentError(
            "--calibrate-projections: not with --max-ppl-increase (plans carry no projections "
            "yet)"));
      }
      return RunPlanSearchCommand(*session, *prepared, std::move(*heldout), flags->plan,
                                  EffectiveBestOf(request), flags->model.threads,
                                  flags->model.block_tokens, ActivationsFlag(flags->model),
                                  flags->out);
    }
    // Projection sets: after the held-out slice when it is cut from the calibration text,
    // else after the calibration lines; never overlapping either.
    ProjectionSets projection_sets;
    auto projection_type = ParseProjectionType(flags->projection_type);
    if (!projection_type.ok()) return Fail(projection_type.status());
    if (flags->calibrated_scoring && !flags->calibrate_projections) {
      return Fail(absl::InvalidArgumentError(
          "--calibrated-scoring needs --calibrate-projections (the fit and scoring sets)"));
    }
    if (flags->calibrate_projections || flags->drop_attention) {
      for (double ridge : flags->ridges) {
        if (!(ridge > 0)) {
          return Fail(absl::InvalidArgumentError(absl::StrFormat("--ridge %g must be > 0", ridge)));
        }
      }
      const bool same_text =
          flags->heldout.path.empty() || flags->heldout.path == request.calibration_path;
      const int after = same_text ? HeldoutEndLine(*checked, *session->tokenizer,
                                                   heldout->first_line - 1, heldout->targets())
                                  : LastCalibrationLine(prepared->calibration);
      ProjectionSetOptions set_options;
      if (flags->drop_attention && fit_window->count() == 0) {
        set_options = DropSetOptions(c.max_seq_len);
      }
      if (flags->fit_window < 0 || flags->fit_window > c.max_seq_len) {
        return Fail(absl::InvalidArgumentError(
            absl::StrFormat("--fit-window %d must be in [0, %d] (the model's context)",
                            flags->fit_window, c.max_seq_len)));
      }
      if (flags->fit_window > 0) {
        const int w = flags->fit_window;
        set_options.contiguous = true;
        set_options.fit = {(4608 + w - 1) / w, w};
        set_options.score = {(2048 + w - 1) / w, w};
      }
      auto sets = BuildProjectionSets(*checked, *session->tokenizer, after, set_options,
                                      "--calibration " + request.calibration_path);
      if (!sets.ok()) return Fail(sets.status());
      projection_sets = std::move(*sets);
    }

    if (flags->drop_attention) {
      DropSearchOptions drop;
      drop.target_layers = options.target_layers;
      drop.substitutes = !flags->no_substitutes;
      drop.rank_with_substitutes = flags->rank_with_substitutes;
      drop.ridges = flags->ridges;
      drop.type = *projection_type;
      return RunDropSearch(*session, projection_sets, drop, std::move(*heldout),
                           flags->model.threads, flags->out);
    }
    std::cerr << absl::StrFormat(
        "search: %s, %d layers; calibration %d x %d tokens (%s), %s; method %s, "
        "order %s, %s, best of %d%s, target %d sharing layers\n",
        c.name, c.n_layers, prepared->calibration.samples, prepared->calibration.tokens,
        prepared->calibration.hash.substr(0, 16),
        CalibrationActivationsNote(prepared->selection.activations), request.method,
        PairOrderName(options.order),
        prepared->selection.method == SearchMethod::kNll
            ? (request.max_nll_increase.has_value()
                   ? absl::StrFormat("NLL increase < %g", *request.max_nll_increase)
                   : std::string("no NLL cap"))
            : absl::StrFormat("threshold %g", options.threshold),
        prepared->selection.best_of, prepared->selection.lazy ? " (lazy)" : "",
        options.target_layers);
    auto backend = MakeCpuBackend(SearchBackendOptions(flags->model.threads, prepared->selection));
    ProgressBar bar("search", "pairs");
    SearchHooks hooks;
    hooks.progress = [&](const GreedyProgress& p) {
      bar.Update(
          p.pair_index, p.pairs_total,
          absl::StrFormat("pair (%d, %d), %d scored, %d accepted, %d/%d layers share", p.pair.i,
                          p.pair.j, p.pairs_scored, p.accepted, p.sharing_layers, p.target_layers));
    };
    std::unique_ptr<ProjectionCalibrator> calibrator;
    SelectionOptions selection = prepared->selection;
    if (flags->calibrate_projections) {
      auto created = ProjectionCalibrator::Create(model, projection_sets.fit, projection_sets.score,
                                                  flags->model.threads);
      if (!created.ok()) return Fail(created.status());
      calibrator = std::move(*created);
      selection.calibrated = flags->calibrated_scoring;
    }
    auto result = RunStrategySearch(model, *backend, prepared->calibration, selection, hooks,
                                    calibrator.get());
    bar.Finish();
    if (!result.ok()) return Fail(result.status());
    PrintResult(c, *result, options.target_layers);

    SharingStrategy strategy = *result->strategy;
    if (flags->calibrate_projections) {
      std::cerr << absl::StrFormat(
          "projections: fit on %d x %d tokens (lines %d..%d), ridge chosen on %d x %d (lines "
          "%d..%d)\n",
          projection_sets.fit.samples, projection_sets.fit.tokens,
          projection_sets.fit.source_lines.front(), LastCalibrationLine(projection_sets.fit),
          projection_sets.score.samples, projection_sets.score.tokens,
          projection_sets.score.source_lines.front(), LastCalibrationLine(projection_sets.score));
      auto calibrated = calibrator->Calibrate(strategy, flags->ridges, *projection_type);
      if (!calibrated.ok()) return Fail(calibrated.status());
      for (const auto& [ridge, nll] : calibrated->tried) {
        std::cout << absl::StrFormat("ridge      %-8g scoring NLL +%.4f\n", ridge,
                                     nll - calibrator->unshared_score_nll());
      }
      std::cout << absl::StrFormat(
          "projections %s: scoring NLL +%.4f (without: +%.4f)%s\n",
          calibrated->projections != nullptr ? absl::StrFormat("ridge %g", calibrated->ridge)
                                             : std::string("none kept"),
          calibrated->score_nll - calibrator->unshared_score_nll(),
          calibrated->uncalibrated_score_nll - calibrator->unshared_score_nll(),
          calibrated->projections != nullptr
              ? absl::StrFormat("; %d layers x %d bytes", calibrated->projections->layers().size(),
                                calibrated->projections->bytes_per_layer())
              : std::string());
      auto with = strategy.WithProjections(calibrated->projections);
      if (!with.ok()) return Fail(with.status());
      strategy = std::move(*with);  // provenance kept
      if (calibrated->projections != nullptr) {
        strategy.provenance().note += absl::StrFormat(
            "; projections ridge %g, fit %d x %d, scoring NLL +%.4f (without +%.4f)",
            calibrated->ridge, projection_sets.fit.samples, projection_sets.fit.tokens,
            calibrated->score_nll - calibrator->unshared_score_nll(),
            calibrated->uncalibrated_score_nll - calibrator->unshared_score_nll());
      }
    }
    // Quality on record: held-out perplexity with and without the strategy.
    auto quality = MeasureHeldout(model, std::move(*heldout), flags->model.threads,
                                  std::make_shared<const SharingStrategy>(strategy),
                                  result->calibration_score);
    if (!quality.ok()) return Fail(quality.status());
    RecordQuality(*quality, &strategy.provenance());
    PrintQuality(*quality);
    s = strategy.WriteFile(flags->out);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrFormat("wrote      %s (strategy %s)\n", flags->out, strategy.id());
    return 0;
  };
}

}  // namespace kvshare::cli
