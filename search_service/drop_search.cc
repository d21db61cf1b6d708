#include "search_service/drop_search.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvshare {
namespace {

absl::Status CheckOptions(const ModelConfig& c, const DropSearchOptions& o) {
  if (o.target_layers < 1 || o.target_layers > c.n_layers - 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "drop search: target_layers %d must be in [1, %d] (every layer but 0 of model '%s')",
        o.target_layers, c.n_layers - 1, c.name));
  }
  if (o.substitutes && o.ridges.empty()) {
    return absl::InvalidArgumentError("drop search: no ridge strength to try");
  }
  for (double r : o.ridges) {
    if (!(r > 0)) return absl::InvalidArgumentError(absl::StrFormat("--ridge %g must be > 0", r));
  }
  return absl::OkStatus();
}

absl::StatusOr<SharingStrategy> Dropping(const Model& model, std::vector<int> layers) {
  std::vector<int> kv(model.config().n_layers);
  std::iota(kv.begin(), kv.end(), 0);
  std::sort(layers.begin(), layers.end());
  return SharingStrategy::Create(kv, model.fingerprint(), layers);
}

}  // namespace

ProjectionSetOptions DropSetOptions(int max_seq_len) {
  const int w = std::max(2, std::min(512, max_seq_len));
  ProjectionSetOptions o;
  o.contiguous = true;
  o.fit = {(4608 + w - 1) / w, w};
  o.score = {(2048 + w - 1) / w, w};
  return o;
}

absl::StatusOr<DropRanking> RankAttentionDrops(const Model& model, ProjectionCalibrator& calibrator,
                                               const DropSearchOptions& options,
                                               const DropSearchHooks& hooks) {
  const ModelConfig& c = model.config();
  absl::Status s = CheckOptions(c, options);
  if (!s.ok()) return s;
  std::vector<std::shared_ptr<const OutputProjections>> single(c.n_layers);
  if (options.substitutes && options.rank_with_substitutes) {  // all from one pass
    auto fitted =
        calibrator.FitEachSubstitute(options.ridges[options.ridges.size() / 2], options.type);
    if (!fitted.ok()) return fitted.status();
    single = std::move(*fitted);
  }
  DropRanking ranking;
  for (int l = 1; l < c.n_layers; ++l) {
    if (hooks.cancel != nullptr && hooks.cancel->load()) {
      return absl::CancelledError(absl::StrFormat("drop search cancelled at layer %d", l));
    }
    auto st = Dropping(model, {l});
    if (st.ok()) st = st->WithProjections(single[l]);
    if (!st.ok()) return st.status();
    auto nll = calibrator.ScoreNll(std::make_shared<const SharingStrategy>(std::move(*st)));
    if (!nll.ok()) return nll.status();
    ranking.push_back({*nll - calibrator.unshared_score_nll(), l});
    if (hooks.progress) hooks.progress(l, c.n_layers - 1);
  }
  std::stable_sort(ranking.begin(), ranking.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  return ranking;
}

absl::StatusOr<DropSearchResult> FitAttentionDrops(const Model& model,
                                                   ProjectionCalibrator& calibrator,
                                                   const DropRanking& ranking,
                                                   const DropSearchOptions& options) {
  absl::Status s = CheckOptions(model.config(), options);
  if (!s.ok()) return s;
  if (int(ranking.size()) < options.target_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("drop search: a ranking of %d layers for target_layers %d", ranking.size(),
                        options.target_layers));
  }
  std::vector<int> layers;
  for (int i = 0; i < options.target_layers; ++i) layers.push_back(ranking[i].second);
  auto st = Dropping(model, layers);
  if (!st.ok()) return st.status();
  DropSearchResult out;
  out.ranking = ranking;
  SharingStrategy strategy = std::move(*st);
  if (options.substitutes) {
    auto cal = calibrator.Calibrate(strategy, options.ridges, options.type, /*substitutes=*/true);
    if (!cal.ok()) return cal.status();
    auto with = strategy.WithProjections(cal->projections);
    if (!with.ok()) return with.status();
    strategy = std::move(*with);
    out.ridge = cal->ridge;
    out.score_increase = cal->score_nll - calibrator.unshared_score_nll();
    out.bare_increase = cal->uncalibrated_score_nll - calibrator.unshared_score_nll();
    for (const auto& [ridge, nll] : cal->tried) {
      out.tried.push_back({ridge, nll - calibrator.unshared_score_nll()});
    }
  } else {
    auto nll = calibrator.ScoreNll(std::make_shared<const SharingStrategy>(strategy));
    if (!nll.ok()) return nll.status();
    out.score_increase = *nll - calibrator.unshared_score_nll();
    out.bare_increase = out.score_increase;
  }
  StrategyProvenance& p = strategy.provenance();
  p.method = "drop";
  p.order = "ranked";
  p.target_layers = options.target_layers;
  p.score = out.score_increase;
  p.note =
      options.substitutes && out.ridge > 0
          ? absl::StrFormat(
                "attention dropped on %d layers [%s], each with a linear substitute (ridge "
                "%g); scoring NLL %+.4f",
                layers.size(), absl::StrJoin(strategy.attention_dropped(), ","), out.ridge,
                out.score_increase)
          : absl::StrFormat("attention dropped on %d layers [%s]; scoring NLL %+.4f", layers.size(),
                            absl::StrJoin(strategy.attention_dropped(), ","), out.score_increase);
  out.strategy = std::make_shared<const SharingStrategy>(std::move(strategy));
  return out;
}

absl::StatusOr<DropSearchResult> SearchAttentionDrops(const Model& model,
                                                      ProjectionCalibrator& calibrator,
                                                      const DropSearchOptions& options,
                                                      const DropSearchHooks& hooks) {
  auto ranking = RankAttentionDrops(model, calibrator, options, hooks);
  if (!ranking.ok()) return ranking.status();
  return FitAttentionDrops(model, calibrator, *ranking, options);
}

absl::StatusOr<StrategySearchResult> RunDropAsSearch(const Model& model, const ProjectionSets& sets,
                                                     int threads, int target_layers,
                                                     bool substitutes, const SearchHooks& hooks) {
  const auto start = std::chrono::steady_clock::now();
  if (hooks.on_phase) hooks.on_phase(SearchPhase::kCalibration);
  auto calibrator = ProjectionCalibrator::Create(model, sets.fit, sets.score, threads);
  if (!calibrator.ok()) return calibrator.status();
  const double calibration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (hooks.on_phase) hooks.on_phase(SearchPhase::kGreedy);
  DropSearchOptions options;
  options.target_layers = target_layers;
  options.substitutes = substitutes;
  DropSearchHooks drop_hooks;
  drop_hooks.cancel = hooks.cancel;
  auto found = SearchAttentionDrops(model, **calibrator, options, drop_hooks);
  if (!found.ok()) return found.status();
  StrategySearchResult r;
  r.strategy = found->strategy;
  GreedyResult& g = r.selection.greedy;
  g.kv_source = found->strategy->kv_source();
  g.accepted = int(found->strategy->attention_dropped().size());
  g.stop = StopReason::kTargetReached;
  g.score = -found->score_increase;
  r.calibration_score = 0;  // no cosine: the drops are judged by NLL
  r.calibration_seconds = calibration_seconds;
  r.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.greedy_seconds = r.total_seconds - calibration_seconds;
  return r;
}

}  // namespace kvshare
