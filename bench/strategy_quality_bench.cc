// Strategy quality at equal KV memory (issue 12): held-out perplexity of the strategies each
// selection rule and each baseline pattern gives at k shared layers, beside the unshared
// model's, with the calibration cosine score and the search time (wall and CPU).
//
//   build/bench/strategy_quality_bench [--json FILE] [--threads 2] [--eval-tokens 16384]
//                                      [--context 512] [--models smollm2,gemma3,stories]
//                                      [--methods NAME,NAME,...] [--shared 4,8,12]
//
// SmolLM2-135M: k = 4, 8, 12 of 30; Gemma 3 270M (the make_test_models.sh cache, not run by
// default): k = 3, 5, 7 of 18, baselines that break its local/global rule shown as such;
// stories260K: k = 1, 2 of 5. Calibration: the method's
// defaults (first 30 lines of >= 64 tokens of the text); held-out: the text from the line
// after the last calibration line (search_service/heldout_quality.h), WikiText-2 test for
// SmolLM2 and tinystories-sample.txt for stories260K.
//
// Rows: every search rule (AllMethods; one run per rule to the largest k, the smaller k being
// its first acceptances, timed at that acceptance with the calibration forward included) and
// every baseline pattern (search_service/baseline_strategies.h; no search). --methods picks
// some; the default is all. Each rule's forwards take its method's default activations
// (search_request.h RuleDefaultsFor: the paper's f32, nll one int8 digit);
// nll-similar-lazy8-f32 and -int8x2 are the default rule with exact ones and two digits.
//
// Issue 18 rows (--calibrate, on by default; --no-calibrate leaves them out):
//   <rule>+proj      the rule's strategy with calibrated output projections
//                    (search_service/projection_fit.h; ridge chosen on the scoring set);
//                    search time = the rule's + the calibration's; bytes = projection bytes.
//   <rule>:drop      the same layers with their attention dropped instead of shared (equal KV
//                    memory): does reading the other layer's cache beat reading nothing?
//   drop-ranked      the k layers whose single attention drop costs least on the scoring set.
//   <row>+lin        a row's dropped layers each with a linear substitute for its attention
//                    (output_projections.h; ridge chosen on the scoring set; --no-substitutes
//                    leaves these and lin-ranked out): <rule>:drop+lin, drop-ranked+lin.
//   lin-ranked       the k layers whose single drop with a fitted substitute costs least on
//                    the scoring set, fitted together.
// Projection sets: scoring 16 x 128 tokens, then fit 36 x 128, from the lines after the end of
// the held-out slice (projection_sets.h), so calibration, held-out, fit and scoring text never
// overlap. The drop rows (ranking and substitutes) use the drop search's own sets from the same
// line: contiguous windows of min(512, context) tokens (drop_search.h DropSetOptions).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"
#include "search_service/baseline_strategies.h"
#include "search_service/calibration.h"
#include "search_service/cosine_evaluator.h"
#include "search_service/drop_search.h"
#include "search_service/heldout_quality.h"
#include "search_service/projection_fit.h"
#include "search_service/projection_sets.h"
#include "search_service/search_request.h"
#include "search_service/strategy_search.h"
#include "service_runtime/locate.h"

namespace kvshare::bench {
namespace {

struct Flags {
  std::string json;
  int threads = 2;
  int eval_tokens = 16384;
  int context = 512;
  std::vector<std::string> models = {"smollm2", "stories"};
  std::vector<std::string> methods;  // empty: all
  std::vector<int> shared;           // empty: the model's defaults
  bool calibrate = true;             // the issue 18 rows
  bool substitutes = true;           // their +lin and lin-ranked rows
};

// One row family of the table: a search rule or a baseline pattern.
struct Method {
  std::string name;
  bool baseline = false;
  SelectionOptions selection;  // searches
  BaselinePattern pattern = BaselinePattern::kAlternate;
  bool small_models_only = false;  // skipped for models of more than 8 layers
};

std::vector<Method> AllMethods() {
  std::vector<Method> out;
  auto search = [&](const std::string& name, SearchMethod m, PairOrder order, int k, bool lazy,
                    std::optional<double> r = {}, bool small_models_only = false) {
    Method x;
    x.name = name;
    x.selection.method = m;
    x.selection.greedy.order = order;
    x.selection.best_of = k;
    x.selection.lazy = lazy;
    x.selection.max_nll_increase = r;
    x.selection.activations = RuleDefaultsFor(SearchMethodName(m)).activations;
    x.small_models_only = small_models_only;
    out.push_back(x);
  };
  // The paper's rule, both orders.
  search("kvsharer-dissimilar", SearchMethod::kKvSharer, PairOrder::kDissimilar, 1, false);
  search("kvsharer-similar", SearchMethod::kKvSharer, PairOrder::kSimilar, 1, false);
  // Best-of-K with the paper's cosine score.
  search("kvsharer-similar-best8", SearchMethod::kKvSharer, PairOrder::kSimilar, 8, false);
  // The NLL cap, first acceptable pair (K = 1). A cap that binds makes the search score every
  // remaining pair of the order (~400 on SmolLM2), so these run on small models only.
  search("nll-dissimilar-R0.5", SearchMethod::kNll, PairOrder::kDissimilar, 1, false, 0.5, true);
  search("nll-similar-R0.5", SearchMethod::kNll, PairOrder::kSimilar, 1, false, 0.5, true);
  // Best-of-K on the calibration NLL: exact, and lazy.
  search("nll-dissimilar-lazy8", SearchMethod::kNll, PairOrder::kDissimilar, 8, true);
  search("nll-similar-best8", SearchMethod::kNll, PairOrder::kSimilar, 8, false);
  search("nll-similar-lazy8", SearchMethod::kNll, PairOrder::kSimilar, 8, true);
  // The default rule with exact activations, and with two int8 digits (one for the logits; the
  // KV plan search's): the nll rule's default is one int8 digit.
  search("nll-similar-lazy8-f32", SearchMethod::kNll, PairOrder::kSimilar, 8, true);
  out.back().selection.activations = cpu::Activations::kF32;
  search("nll-similar-lazy8-int8x2", SearchMethod::kNll, PairOrder::kSimilar, 8, true);
  out.back().selection.activations = cpu::Activations::kInt8x2;
  search("nll-similar-lazy16", SearchMethod::kNll, PairOrder::kSimilar, 16, true);
  // Issue 18: candidates scored with their calibrated projections (scoring-set NLL).
  search("nll-similar-lazy8-cal", SearchMethod::kNll, PairOrder::kSimilar, 8, true);
  out.back().selection.calibrated = true;
  search("nll-dissimilar-lazy8-cal", SearchMethod::kNll, PairOrder::kDissimilar, 8, true);
  out.back().selection.calibrated = true;
  for (BaselinePattern p : AllBaselinePatterns()) {
    Method x;
    x.name = absl::StrCat("baseline-", BaselinePatternName(p));
    x.baseline = true;
    x.pattern = p;
    out.push_back(x);
  }
  return out;
}

struct ModelSpec {
  std::string name;
  std::string path;
  std::string text_file;
  std::vector<int> shared;
};

struct Row {
  std::string method;
  int shared = 0;
  bool available = true;
  std::string why;  // when not available
  std::vector<int> kv_source;
  std::vector<int> dropped;
  std::shared_ptr<const OutputProjections> projections;
  int64_t bytes_added = 0;
  double ridge = 0;
  StrategyQuality quality;
  double search_seconds = 0;
  double search_cpu_seconds = 0;  // process CPU time, all threads
  int candidates_scored = 0;      // up to this k's acceptance
};

absl::StatusOr<nlohmann::json> RunModel(const ModelSpec& spec, const Flags& flags,
                                        const std::vector<Method>& methods, double* baseline_ppl,
                                        std::vector<Row>* rows) {
  auto model = Model::Load(spec.path);
  if (!model.ok()) return model.status();
  const Model& m = **model;
  const ModelConfig& c = m.config();
  auto tok = LoadTokenizerForModel(m, "");
  if (!tok.ok()) return tok.status();
  auto text = ReadFileToString(spec.text_file);
  if (!text.ok()) return text.status();
  auto calibration = BuildCalibrationSet(*text, **tok, CalibrationOptions{}, spec.text_file);
  if (!calibration.ok()) return calibration.status();
  HeldoutOptions ho;
  ho.tokens = flags.eval_tokens;
  ho.context = std::min(flags.context, c.max_seq_len);
  auto slice =
      BuildHeldoutSlice(*text, **tok, LastCalibrationLine(*calibration), ho, spec.text_file);
  if (!slice.ok()) return slice.status();
  const HeldoutSlice heldout = *slice;
  const double t0 = Now();
  auto meter = QualityMeter::Create(m, std::move(*slice), flags.threads);
  if (!meter.ok()) return meter.status();
  *baseline_ppl = std::exp((*meter)->baseline().mean_nll);
  std::fprintf(stderr,
               "%s: calibration lines %d..%d; held-out from line %d, %lld targets; "
               "unshared ppl %.4f (%.1f s)\n",
               c.name.c_str(), calibration->source_lines.front(), LastCalibrationLine(*calibration),
               heldout.first_line, (long long)heldout.targets(), *baseline_ppl, Now() - t0);
  auto backend = MakeCpuBackend(flags.threads);
  // The calibration cosine of any strategy: scored against the identity from its first
  // sharing layer.
  auto cos_transformer = Transformer::Create(m, *backend, SearchMaxRows(*calibration));
  if (!cos_transformer.ok()) return cos_transformer.status();
  auto cosine = CosineEvaluator::Create(**cos_transformer, *calibration);
  if (!cosine.ok()) return cosine.status();
  auto calibration_cosine = [&](const std::vector<int>& kv) -> absl::StatusOr<double> {
    int first = 1;
    while (first < c.n_layers && kv[first] == first) ++first;
    if (first == c.n_layers) return 1.0;
    return (*cosine)->Score(kv, first);
  };

  nlohmann::json j;
  j["model"] = c.name;
  j["fingerprint"] = m.fingerprint();
  j["n_layers"] = c.n_layers;
  j["calibration"] = {{"file", spec.text_file},
                      {"samples", calibration->samples},
                      {"tokens", calibration->tokens},
                      {"hash", calibration->hash}};
  j["heldout"] = {{"file", spec.text_file},
                  {"first_line", heldout.first_line},
                  {"targets", heldout.targets()},
                  {"context", heldout.context},
                  {"hash", heldout.hash},
                  {"baseline_ppl", *baseline_ppl},
                  {"baseline_nll", (*meter)->baseline().mean_nll}};

  auto measure = [&](Row& row) -> absl::Status {
    auto plain = SharingStrategy::Create(row.kv_source, m.fingerprint(), row.dropped);
    if (!plain.ok()) return plain.status();
    auto st = plain->WithProjections(row.projections);
    if (!st.ok()) return st.status();
    // The cosine evaluator knows kv_source only: drops and projections have none (0).
    absl::StatusOr<double> cos = 0.0;
    if (row.dropped.empty() && row.projections == nullptr) cos = calibration_cosine(row.kv_source);
    if (!cos.ok()) return cos.status();
    const double t = Now();
    auto q = (*meter)->Measure(std::make_shared<const SharingStrategy>(std::move(*st)), *cos);
    if (!q.ok()) return q.status();
    row.quality = *q;
    std::fprintf(stderr,
                 "  %-26s k=%-2d ppl %9.3f  dNLL %.4f  cos %.4f  search %.1f s  "
                 "(eval %.1f s)\n",
                 row.method.c_str(), row.shared, q->heldout_ppl(), q->nll_increase(),
                 q->calibration_score, row.search_seconds, Now() - t);
    return absl::OkStatus();
  };

  // Issue 18: projection sets after the held-out slice, and their calibrator; the drop search's
  // sets (contiguous windows, DropSetOptions) and theirs, for the drop rows.
  std::unique_ptr<ProjectionSets> psets, dsets;
  std::unique_ptr<ProjectionCalibrator> calibrator, drop_calibrator;
  if (flags.calibrate) {
    const int after = HeldoutEndLine(*text, **tok, heldout.first_line - 1, heldout.targets());
    auto sets = BuildProjectionSets(*text, **tok, after, {}, spec.text_file);
    if (!sets.ok()) return sets.status();
    psets = std::make_unique<ProjectionSets>(std::move(*sets));
    const double tc = Now();
    auto cal = ProjectionCalibrator::Create(m, psets->fit, psets->score, flags.threads);
    if (!cal.ok()) return cal.status();
    calibrator = std::move(*cal);
    std::fprintf(stderr,
                 "  projection sets: scoring lines %d..%d, fit lines %d..%d (held-out ends "
                 "before line %d); unshared scoring NLL %.4f (%.1f s)\n",
                 psets->score.source_lines.front(), LastCalibrationLine(psets->score),
                 psets->fit.source_lines.front(), LastCalibrationLine(psets->fit), after,
                 calibrator->unshared_score_nll(), Now() - tc);
    auto windows =
        BuildProjectionSets(*text, **tok, after, DropSetOptions(c.max_seq_len), spec.text_file);
    if (!windows.ok()) return windows.status();
    dsets = std::make_unique<ProjectionSets>(std::move(*windows));
    auto dcal = ProjectionCalibrator::Create(m, dsets->fit, dsets->score, flags.threads);
    if (!dcal.ok()) return dcal.status();
    drop_calibrator = std::move(*dcal);
    std::fprintf(stderr, "  drop sets: %d + %d windows of %d tokens from line %d to %d\n",
                 dsets->score.samples, dsets->fit.samples, dsets->fit.tokens,
                 dsets->score.source_lines.front(), LastCalibrationLine(dsets->fit));
  }
  // `base` (its sharing and drops) with what the calibrator fits for it: projections for the
  // sharing layers, and with `substitutes` a linear substitute for each dropped layer.
  // Substitutes are fitted on the drop search's windows, projections on the line samples.
  auto calibrated_row = [&](const Row& base, const std::string& method,
                            bool substitutes) -> absl::Status {
    auto plain = SharingStrategy::Create(base.kv_source, m.fingerprint(), base.dropped);
    if (!plain.ok()) return plain.status();
    const double t = Now();
    ProjectionCalibrator& fitter = substitutes ? *drop_calibrator : *calibrator;
    auto cal = fitter.Calibrate(*plain, DefaultRidges(), DType::kF16, substitutes);
    if (!cal.ok()) return cal.status();
    Row row = base;
    row.method = method;
    row.projections = cal->projections;
    row.ridge = cal->ridge;
    row.search_seconds = base.search_seconds + (Now() - t);
    const auto& p = cal->projections;
    row.bytes_added = p == nullptr ? 0
                                   : int64_t(p->bytes_per_layer() * p->layers().size() +
                                             p->bytes_per_substitute() * p->substitutes().size());
    absl::Status s = measure(row);
    if (s.ok()) rows->push_back(row);
    return s;
  };
  // The issue 18 rows of a searched or baseline row: with projections, dropped instead, and
  // dropped with linear substitutes.
  auto extra_rows = [&](const Row& base) -> absl::Status {
    if (calibrator == nullptr || !base.available) return absl::OkStatus();
    absl::Status s = calibrated_row(base, base.method + "+proj", false);
    if (!s.ok()) return s;
    Row drop = base;
    drop.method = base.method + ":drop";
    drop.dropped.clear();
    for (int l = 0; l < c.n_layers; ++l) {
      if (base.kv_source[l] != l) drop.dropped.push_back(l);
      drop.kv_source[l] = l;
    }
    drop.search_seconds = base.search_seconds;
    s = measure(drop);
    if (!s.ok()) return s;
    rows->push_back(drop);
    return flags.substitutes ? calibrated_row(drop, drop.method + "+lin", true) : absl::OkStatus();
  };

  const int k_max = spec.shared.back();
  for (const Method& method : methods) {
    if (method.small_models_only && c.n_layers > 8) continue;
    if (method.baseline) {
      for (int k : spec.shared) {
        Row row;
        row.method = method.name;
        row.shared = k;
        auto kv = BaselineStrategy(method.pattern, c.n_layers, k);
        if (!kv.ok()) {
          row.available = false;
          row.why = std::string(kv.status().message());
          rows->push_back(row);
          continue;
        }
        row.kv_source = *kv;
        // A pattern that breaks the model's local/global rule (Gemma 3, docs/METHOD.md §1)
        // cannot be served: the engine refuses it, so the row says why instead.
        auto bound = SharingStrategy::Create(*kv, m.fingerprint());
        absl::Status fits = bound.ok() ? bound->ValidateFor(c, m.fingerprint()) : bound.status();
        if (!fits.ok()) {
          row.available = false;
          row.why = std::string(fits.message());
          rows->push_back(row);
          continue;
        }
        absl::Status s = measure(row);
        if (!s.ok()) return s;
        rows->push_back(row);
        s = extra_rows(row);
        if (!s.ok()) return s;
      }
      continue;
    }
    SelectionOptions o = method.selection;
    o.greedy.target_layers = k_max;
    if (o.calibrated && calibrator == nullptr) continue;  // --no-calibrate
    auto search_backend = MakeCpuBackend(SearchBackendOptions(flags.threads, o));
    auto r = RunStrategySearch(m, *search_backend, *calibration, o, {}, calibrator.get());
    if (!r.ok()) return r.status();
    const GreedyResult& g = r->selection.greedy;
    std::fprintf(stderr,
                 "  search %s to %d: %.1f s, CPU %.1f s (calibration %.1f s), %zu candidates, "
                 "%s\n",
                 method.name.c_str(), k_max, r->total_seconds, r->total_cpu_seconds,
                 r->calibration_seconds, g.trace.size(), StopReasonName(g.stop));
    nlohmann::json trace = nlohmann::json::array();
    for (size_t t = 0; t < g.trace.size(); ++t) {
      trace.push_back({{"i", g.trace[t].i},
                       {"j", g.trace[t].j},
                       {"score", g.trace[t].score},
                       {"outcome", TrialOutcomeName(r->selection.outcome[t])}});
    }
    j["searches"].push_back({{"method", method.name},
                             {"target_layers", k_max},
                             {"seconds", r->total_seconds},
                             {"calibration_seconds", r->calibration_seconds},
                             {"cpu_seconds", r->total_cpu_seconds},
                             {"accept_seconds", r->accept_seconds},
                             {"accept_cpu_seconds", r->accept_cpu_seconds},
                             {"stop", StopReasonName(g.stop)},
                             {"trace", trace}});
    for (int k : spec.shared) {
      Row row;
      row.method = method.name;
      row.shared = k;
      auto kv = StrategyAfterAccepts(g.trace, c.n_layers, k);
      if (!kv.ok()) {
        row.available = false;
        row.why = absl::StrFormat("%s after %d acceptances", StopReasonName(g.stop), g.accepted);
        row.search_seconds = r->total_seconds;
        rows->push_back(row);
        continue;
      }
      row.kv_source = *kv;
      row.search_seconds = r->accept_seconds[k - 1];
      row.search_cpu_seconds = r->accept_cpu_seconds[k - 1];
      int accepts = 0;
      for (size_t t = 0; t < g.trace.size() && accepts < k; ++t) {
        ++row.candidates_scored;
        accepts += g.trace[t].accepted;
      }
      absl::Status s = measure(row);
      if (!s.ok()) return s;
      rows->push_back(row);
      s = extra_rows(row);
      if (!s.ok()) return s;
    }
  }
  // drop-ranked: the k layers whose attention drop alone costs least on the scoring set;
  // lin-ranked: the same with each drop's linear substitute (search_service/drop_search.h).
  for (bool substitutes : {false, true}) {
    if (calibrator == nullptr || (substitutes && !flags.substitutes)) continue;
    const double t = Now();
    DropSearchOptions o;
    o.substitutes = substitutes;
    o.rank_with_substitutes = substitutes;
    o.target_layers = spec.shared.back();
    DropSearchHooks hooks;
    hooks.progress = [&](int done, int total) {
      std::fprintf(stderr, "  %s: %d/%d layers ranked (%.0f s)\n",
                   substitutes ? "lin-ranked" : "drop-ranked", done, total, Now() - t);
    };
    auto ranking = RankAttentionDrops(m, *drop_calibrator, o, hooks);
    if (!ranking.ok()) return ranking.status();
    const double rank_seconds = Now() - t;
    for (int k : spec.shared) {
      o.target_layers = k;
      const double tf = Now();
      auto fitted = FitAttentionDrops(m, *drop_calibrator, *ranking, o);
      if (!fitted.ok()) return fitted.status();
      const SharingStrategy& st = *fitted->strategy;
      Row row;
      row.method = substitutes ? "lin-ranked" : "drop-ranked";
      row.shared = k;
      row.kv_source = st.kv_source();
      row.dropped = st.attention_dropped();
      row.projections = st.projections();
      row.ridge = fitted->ridge;
      if (const auto& p = st.projections(); p != nullptr) {
        row.bytes_added = int64_t(p->bytes_per_substitute() * p->substitutes().size());
      }
      row.search_seconds = rank_seconds + (Now() - tf);  // the ranking, then this k's fit
      row.candidates_scored = c.n_layers - 1;
      absl::Status s = measure(row);
      if (!s.ok()) return s;
      rows->push_back(row);
      if (!substitutes && flags.substitutes) {
        s = calibrated_row(row, "drop-ranked+lin", true);
        if (!s.ok()) return s;
      }
    }
  }
  nlohmann::json jrows = nlohmann::json::array();
  for (const Row& row : *rows) {
    nlohmann::json jr = {
        {"method", row.method}, {"shared", row.shared}, {"available", row.available}};
    if (!row.available) {
      jr["why"] = row.why;
    } else {
      jr["kv_source"] = row.kv_source;
      if (!row.dropped.empty()) jr["attention_dropped"] = row.dropped;
      if (row.projections != nullptr) {
        jr["projection_layers"] = row.projections->layers();
        jr["projection_sha256"] = row.projections->sha256();
        jr["ridge"] = row.ridge;
      }
      jr["bytes_added"] = row.bytes_added;
      jr["heldout_ppl"] = row.quality.heldout_ppl();
      jr["heldout_nll"] = row.quality.heldout_nll;
      jr["nll_increase"] = row.quality.nll_increase();
      jr["calibration_score"] = row.quality.calibration_score;
      jr["search_seconds"] = row.search_seconds;
      jr["search_cpu_seconds"] = row.search_cpu_seconds;
      jr["candidates_scored"] = row.candidates_scored;
    }
    jrows.push_back(jr);
  }
  j["rows"] = jrows;
  return j;
}

void PrintTable(const nlohmann::json& j, double baseline_ppl, const std::vector<Row>& rows,
                const std::vector<int>& shared) {
  const std::string model = j["model"].get<std::string>();
  const int L = j["n_layers"].get<int>();
  std::printf(
      "\n%s (%d layers): held-out perplexity, %lld targets from line %d in %d-token "
      "windows; unshared %.4f\n",
      model.c_str(), L, (long long)j["heldout"]["targets"].get<int64_t>(),
      j["heldout"]["first_line"].get<int>(), j["heldout"]["context"].get<int>(), baseline_ppl);
  std::printf(
      "dNLL: held-out NLL increase over unshared, nats/token; x paper: dNLL / the "
      "paper's (kvsharer-dissimilar) at the same k; cos: calibration cosine score;\n"
      "scored: candidates scored up to that k; search: wall s to that k's acceptance "
      "(calibration forward included), cpu: process CPU s (all threads)\n");
  for (int k : shared) {
    const Row* paper = nullptr;
    for (const Row& r : rows) {
      if (r.shared == k && r.available && r.method == "kvsharer-dissimilar") paper = &r;
    }
    std::printf("\n k=%-2d of %d (KV %.1f%%)\n", k, L, 100.0 * (L - k) / L);
    std::printf("  %-32s %10s %8s %8s %6s %6s %8s %8s %10s\n", "method", "ppl", "dNLL", "x paper",
                "cos", "scored", "search", "cpu", "bytes+");
    const Row* best = nullptr;
    for (const Row& r : rows) {
      if (r.shared != k) continue;
      if (!r.available) {
        std::printf("  %-32s %10s  (%s)\n", r.method.c_str(), "-", r.why.c_str());
        continue;
      }
      if (best == nullptr || r.quality.heldout_nll < best->quality.heldout_nll) best = &r;
      const bool searched = r.candidates_scored > 0 || r.search_seconds > 0;
      std::printf(
          "  %-32s %10.3f %8.4f %8s %6.3f %6s %8s %8s %10lld\n", r.method.c_str(),
          r.quality.heldout_ppl(), r.quality.nll_increase(),
          paper != nullptr && paper->quality.nll_increase() > 0
              ? absl::StrFormat("%.3f", r.quality.nll_increase() / paper->quality.nll_increase())
                    .c_str()
              : "-",
          r.quality.calibration_score,
          searched ? absl::StrFormat("%d", r.candidates_scored).c_str() : "-",
          searched ? absl::StrFormat("%.1f", r.search_seconds).c_str() : "-",
          searched ? absl::StrFormat("%.1f", r.search_cpu_seconds).c_str() : "-",
          (long long)r.bytes_added);
    }
    if (best != nullptr) {
      std::printf("  best: %s, ppl %.3f, dNLL %.4f", best->method.c_str(),
                  best->quality.heldout_ppl(), best->quality.nll_increase());
      if (paper != nullptr && paper->quality.nll_increase() > 0) {
        std::printf(" = %.3f x the paper's %.4f",
                    best->quality.nll_increase() / paper->quality.nll_increase(),
                    paper->quality.nll_increase());
      }
      std::printf("\n");
    }
  }
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
    } else if (a == "--eval-tokens") {
      flags.eval_tokens = std::atoi(next().c_str());
    } else if (a == "--context") {
      flags.context = std::atoi(next().c_str());
    } else if (a == "--models") {
      flags.models = absl::StrSplit(next(), ',');
    } else if (a == "--methods") {
      flags.methods = absl::StrSplit(next(), ',');
    } else if (a == "--no-calibrate") {
      flags.calibrate = false;
    } else if (a == "--no-substitutes") {
      flags.substitutes = false;
    } else if (a == "--shared") {
      for (absl::string_view s : absl::StrSplit(next(), ',')) {
        int k = 0;
        if (!absl::SimpleAtoi(s, &k)) k = -1;
        flags.shared.push_back(k);
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json FILE] [--threads N] [--eval-tokens N] [--context N] "
                   "[--models smollm2,gemma3,stories] [--methods NAME,...] [--shared K,...] "
                   "[--no-calibrate] [--no-substitutes]\n",
                   argv[0]);
      return 2;
    }
  }
  if (flags.eval_tokens < 64 || flags.context < 16 || flags.threads < 1) {
    std::fprintf(stderr, "--eval-tokens must be >= 64, --context >= 16, --threads >= 1\n");
    return 2;
  }
  for (int k : flags.shared) {
    if (k < 1) {
      std::fprintf(stderr, "--shared: each k must be an integer >= 1\n");
      return 2;
    }
  }
  std::vector<Method> methods;
  for (const Method& m : AllMethods()) {
    bool picked = flags.methods.empty();
    for (const std::string& name : flags.methods) picked |= name == m.name;
    if (picked) methods.push_back(m);
  }
  for (const std::string& name : flags.methods) {
    bool known = name == "none";  // only the drop-ranked and lin-ranked rows
    for (const Method& m : AllMethods()) known |= name == m.name;
    if (!known) {
      std::vector<std::string> names;
      for (const Method& m : AllMethods()) names.push_back(m.name);
      std::fprintf(stderr, "unknown method '%s' (%s, or none)\n", name.c_str(),
                   absl::StrJoin(names, ", ").c_str());
      return 2;
    }
  }
  nlohmann::json out;
  out["threads"] = flags.threads;
  for (const std::string& name : flags.models) {
    ModelSpec spec;
    absl::StatusOr<std::string> path, text;
    if (name == "smollm2") {
      path = SmolLm2GgufPath();
      text = AssetPath("wikitext-2-raw-test.txt");
      spec.shared = {4, 8, 12};
    } else if (name == "gemma3") {
      // The file tests/reference/make_test_models.sh links into the test-model cache.
      const char* dir = std::getenv("KVSHARE_TEST_MODELS");
      const char* home = std::getenv("HOME");
      path = absl::StrCat(dir != nullptr
                              ? std::string(dir)
                              : absl::StrCat(home != nullptr ? home : "", "/.cache/kvshare/models"),
                          "/gemma-3-270m-q4_k_m.gguf");
      text = AssetPath("wikitext-2-raw-test.txt");
      spec.shared = {3, 5, 7};
    } else if (name == "stories") {
      path = AssetPath("stories260K.bin");
      text = AssetPath("tinystories-sample.txt");
      spec.shared = {1, 2};
    } else {
      std::fprintf(stderr, "unknown model '%s' (smollm2, gemma3, stories)\n", name.c_str());
      return 2;
    }
    if (!path.ok() || !text.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(),
                   std::string((!path.ok() ? path.status() : text.status()).message()).c_str());
      return 1;
    }
    spec.name = name;
    spec.path = *path;
    spec.text_file = *text;
    if (!flags.shared.empty()) spec.shared = flags.shared;
    std::sort(spec.shared.begin(), spec.shared.end());
    std::vector<Row> rows;
    double baseline_ppl = 0;
    auto j = RunModel(spec, flags, methods, &baseline_ppl, &rows);
    if (!j.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), std::string(j.status().message()).c_str());
      return 1;
    }
    PrintTable(*j, baseline_ppl, rows, spec.shared);
    std::fflush(stdout);
    out["models"].push_back(*j);
  }
  WriteJson(flags.json, out);
  return 0;
}

}  // namespace
}  // namespace kvshare::bench

int main(int argc, char** argv) { return kvshare::bench::Main(argc, argv); }
