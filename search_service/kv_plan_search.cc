#include "search_service/kv_plan_search.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

// HeldoutIncreaseFn's reject_above for a check that reads the whole slice.
constexpr double kReadAll = std::numeric_limits<double>::infinity();

// Below this a cost counts as this (so a free step is ranked by its bytes, not divided by 0).
constexpr double kMinCost = 1e-6;

double Efficiency(const PlanAction& a) { return a.bytes_saved / std::max(a.cost, kMinCost); }

KvPlan BasePlan(int n_layers, KvType base) {
  KvPlan p;
  p.kv_source.resize(n_layers);
  for (int l = 0; l < n_layers; ++l) p.kv_source[l] = l;
  p.kv_types.assign(n_layers, base);
  return p;
}

// The plan after applying `a`.
KvPlan Apply(const KvPlan& plan, const PlanAction& a) {
  KvPlan p = plan;
  if (a.kind == PlanAction::kLowerType) {
    p.kv_types[a.layer] = a.type;
    for (size_t l = 0; l < p.kv_source.size(); ++l) {
      if (p.kv_source[l] == a.layer) p.kv_types[l] = a.type;
    }
  } else {
    p.kv_source = ApplyPair(plan.kv_source, a.layer, a.source);
    for (size_t l = 0; l < p.kv_source.size(); ++l) p.kv_types[l] = p.kv_types[p.kv_source[l]];
  }
  return p;
}

KvPlan ApplyAll(KvPlan plan, const std::vector<PlanAction>& actions, size_t count) {
  for (size_t k = 0; k < count; ++k) plan = Apply(plan, actions[k]);
  return plan;
}

absl::Status Cancelled(const KvPlanHooks& hooks, const char* where) {
  if (hooks.cancel != nullptr && hooks.cancel->load(std::memory_order_acquire)) {
    return absl::CancelledError(absl::StrFormat("KV plan search cancelled during %s", where));
  }
  return absl::OkStatus();
}

void Progress(const KvPlanHooks& hooks, const char* phase, int done, int total) {
  if (hooks.progress) hooks.progress(phase, done, total);
}

}  // namespace

double KvLayerBytesPerToken(KvGeometry g, KvType type) {
  g.type = type;
  return double(g.block_bytes()) / g.block_tokens;
}

double KvPlanBytesPerToken(const KvGeometry& g, const KvPlan& plan) {
  double bytes = 0;
  for (size_t l = 0; l < plan.kv_source.size(); ++l) {
    if (plan.kv_source[l] == int(l)) bytes += KvLayerBytesPerToken(g, plan.kv_types[l]);
  }
  return bytes;
}

int FirstPlanDifference(const KvPlan& a, const KvPlan& b) {
  const int n = int(a.kv_source.size());
  for (int l = 0; l < n; ++l) {
    if (a.kv_source[l] != b.kv_source[l]) return l;
    if (a.kv_source[l] == l && a.kv_types[l] != b.kv_types[l]) return l;
  }
  return n;
}

std::string PlanActionString(const PlanAction& a) {
  return a.kind == PlanAction::kLowerType ? absl::StrFormat("%d:%s", a.layer, KvTypeName(a.type))
                                          : absl::StrFormat("%d->%d", a.layer, a.source);
}

absl::Status ValidateKvPlanOptions(const KvPlanOptions& o, bool cli_flags) {
  const char* budget = cli_flags ? "--max-ppl-increase" : "max_ppl_increase";
  if (!std::isfinite(o.max_ppl_increase) || o.max_ppl_increase <= 0 || o.max_ppl_increase > 1000) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %g: the held-out perplexity budget must be a percentage in (0, 1000]",
                        budget, o.max_ppl_increase));
  }
  if (o.share_best_of < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s %d must be >= 1", cli_flags ? "--best-of" : "best_of", o.share_best_of));
  }
  if (o.block_tokens < 1 || o.block_tokens > 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d must be in [1, 1024]",
                        cli_flags ? "--block-tokens" : "kv_block_tokens", o.block_tokens));
  }
  KvGeometry probe;
  probe.n_kv_heads = 1;
  probe.head_dim = kKvV3Group;
  for (KvType t : o.all_types()) {
    if (KvLayerBytesPerToken(probe, t) >= KvLayerBytesPerToken(probe, o.base_type)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("KV plan: lower type %s is not smaller than the base type %s",
                          KvTypeName(t), KvTypeName(o.base_type)));
    }
  }
  return absl::OkStatus();
}

std::vector<KvType> HoldableKvTypes(const std::vector<KvType>& types, KvGeometry g) {
  std::vector<KvType> held;
  for (KvType t : types) {
    g.type = t;
    if (ValidateKvGeometry(g).ok()) held.push_back(t);
  }
  return held;
}

void KeepHoldableTypes(KvPlanOptions* options, const KvGeometry& g) {
  options->lower_types = HoldableKvTypes(options->lower_types, g);
  options->floor_types = HoldableKvTypes(options->floor_types, g);
}

absl::Status CheckPlanCalibration(const KvPlanOptions& o, int calibration_tokens, bool cli_flags) {
  const std::vector<KvType> all = o.all_types();
  const auto tail = std::find_if(all.begin(), all.end(), KvTypeHasTail);
  if (tail == all.end() || calibration_tokens >= 2 * o.block_tokens) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s %d must be >= 2 x %s %d for a KV plan with %s: it keeps block 0 in f16, so a "
      "shorter calibration sample holds no quantised block",
      cli_flags ? "--tokens" : "tokens", calibration_tokens,
      cli_flags ? "--block-tokens" : "kv_block_tokens", o.block_tokens, KvTypeName(*tail)));
}

absl::StatusOr<KvPlanSearchResult> SearchKvPlan(
    const KvGeometry& g, int n_layers, const KvPlanOptions& options, PlanEvaluator& evaluator,
    const LayerDistances* distances, const HeldoutIncreaseFn& heldout, const KvPlanHooks& hooks) {
  absl::Status valid = ValidateKvPlanOptions(options);
  for (KvType t : options.all_types()) {
    KvGeometry tg = g;
    tg.type = t;
    if (valid.ok()) valid = ValidateKvGeometry(tg);
  }
  if (!valid.ok()) return valid;
  const double budget = options.budget_nats();
  KvPlanSearchResult r;
  const KvPlan base = BasePlan(n_layers, options.base_type);
  r.base_bytes_per_token = KvPlanBytesPerToken(g, base);

  absl::Status s;
  std::vector<KvType> lower = options.lower_types;
  std::sort(lower.begin(), lower.end(), [&](KvType a, KvType b) {
    return KvLayerBytesPerToken(g, a) > KvLayerBytesPerToken(g, b);  // widest first
  });

  // 1b. The floors: every layer at one type, smallest first — the floor types smaller than the
  // smallest lower type, then that type. No per-layer choice among the lower types stores fewer
  // bytes than the first that fits, so it is the precision plan, and the scan of steps 2-3 (and
  // step 6, which only adds precision) has nothing to find.
  // After it, the floor types larger than it but smaller than the least a per-layer plan of
  // the lower types stores once not every layer is at the smallest (one layer one type up):
  // int4a, when int4 alone does not fit.
  std::vector<KvType> floors;
  if (!lower.empty()) {
    const double smallest = KvLayerBytesPerToken(g, lower.back());
    const double one_up =
        lower.size() < 2
            ? smallest
            : smallest + (KvLayerBytesPerToken(g, lower[lower.size() - 2]) - smallest) / n_layers;
    auto by_bytes = [&](KvType a, KvType b) {
      return KvLayerBytesPerToken(g, a) < KvLayerBytesPerToken(g, b);
    };
    std::vector<KvType> above;
    for (KvType t : options.floor_types) {
      const double bytes = KvLayerBytesPerToken(g, t);
      if (bytes < smallest) floors.push_back(t);
      if (bytes > smallest && bytes < one_up) above.push_back(t);
    }
    std::sort(floors.begin(), floors.end(), by_bytes);
    std::sort(above.begin(), above.end(), by_bytes);
    floors.push_back(lower.back());
    floors.insert(floors.end(), above.begin(), above.end());
    floors.erase(std::unique(floors.begin(), floors.end()), floors.end());
  }
  bool floor_fits = false;
  double floor_heldout = 0;
  KvType floor_type = options.base_type;
  for (size_t f = 0; options.floor_first && f < floors.size() && !floor_fits; ++f) {
    s = Cancelled(hooks, "the floor check");
    if (!s.ok()) return s;
    Progress(hooks, "floor", int(f), int(floors.size()));
    KvPlan floor = base;
    floor.kv_types.assign(n_layers, floors[f]);
    auto h = heldout(floor, options.early_reject ? budget : kReadAll);
    if (!h.ok()) return h.status();
    r.heldout_checks.push_back(*h);
    floor_fits = *h <= budget;
    floor_heldout = *h;
    floor_type = floors[f];
  }
  if (options.floor_first && !floors.empty()) Progress(hooks, "floor", 1, 1);

  // 1. The base plan, scored and accepted when the scan of steps 2-3 starts from it. A floor that
  // fits is scored from layer 0 itself; its steps' cost then counts from the unshared model
  // (base_total 0: the f16 base differs from it by f16's rounding, ~1e-5 nats).
  double base_total = 0;
  if (!floor_fits) {
    s = Cancelled(hooks, "the base plan");
    if (!s.ok()) return s;
    auto base_cost = evaluator.NllIncrease(base, 0, kReadAll);
    if (!base_cost.ok()) return base_cost.status();
    ++r.calibration_runs;
    s = evaluator.Accept(base, 0);
    if (!s.ok()) return s;
    base_total = *base_cost;
  }

  // 2. Sensitivity of each layer to each lower type, alone.
  const int total = floor_fits ? 0 : n_layers * int(lower.size());
  std::vector<std::vector<double>> cost(n_layers, std::vector<double>(lower.size()));
  for (int l = 0; l < n_layers && !floor_fits; ++l) {
    for (size_t t = 0; t < lower.size(); ++t) {
      s = Cancelled(hooks, "the sensitivity scan");
      if (!s.ok()) return s;
      Progress(hooks, "sensitivity", l * int(lower.size()) + int(t), total);
      KvPlan p = base;
      p.kv_types[l] = lower[t];
      auto c = evaluator.NllIncrease(p, l, kReadAll);
      if (!c.ok()) return c.status();
      ++r.calibration_runs;
      cost[l][t] = std::max(0.0, *c - base_total);
    }
  }
  if (!floor_fits) Progress(hooks, "sensitivity", total, total);

  // 3. Precision steps along each layer's cheapest path, most bytes per nat first.
  std::vector<PlanAction> steps;
  for (int l = 0; l < n_layers && !floor_fits; ++l) {
    double bytes = KvLayerBytesPerToken(g, options.base_type), c = 0;
    for (size_t t = 0; t < lower.size(); ++t) {
      // Skip a type when a smaller one costs no more.
      bool dominated = false;
      for (size_t u = t + 1; u < lower.size(); ++u) dominated |= cost[l][u] <= cost[l][t];
      if (dominated) continue;
      PlanAction a;
      a.kind = PlanAction::kLowerType;
      a.layer = l;
      a.type = lower[t];
      a.bytes_saved = bytes - KvLayerBytesPerToken(g, lower[t]);
      a.cost = std::max(0.0, cost[l][t] - c);
      steps.push_back(a);
      bytes = KvLayerBytesPerToken(g, lower[t]);
      c = cost[l][t];
    }
  }
  // A layer's steps must stay in order: rank each by the worst efficiency up to it (a step is
  // only as good as the path to it), which also keeps the sort stable within a layer.
  std::vector<double> rank(steps.size());
  for (size_t k = 0; k < steps.size(); ++k) {
    rank[k] = Efficiency(steps[k]);
    if (k > 0 && steps[k - 1].layer == steps[k].layer) rank[k] = std::min(rank[k], rank[k - 1]);
  }
  std::vector<size_t> order(steps.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return rank[a] > rank[b]; });
  double estimate = base_total;
  std::vector<bool> layer_blocked(n_layers, false);
  for (size_t k : order) {
    const PlanAction& a = steps[k];
    if (layer_blocked[a.layer]) continue;
    if (estimate + a.cost > budget) {
      layer_blocked[a.layer] = true;  // its later steps need this one
      continue;
    }
    estimate += a.cost;
    r.actions.push_back(a);
  }
  // The floor that fits: one step per layer (its calibration cost shared evenly, for step 5's
  // ratio), scored and accepted as the precision plan.
  double current = base_total;
  if (floor_fits) {
    PlanAction a;
    a.kind = PlanAction::kLowerType;
    a.type = floor_type;
    a.bytes_saved = KvLayerBytesPerToken(g, options.base_type) - KvLayerBytesPerToken(g, a.type);
    for (int l = 0; l < n_layers; ++l) {
      a.layer = l;
      r.actions.push_back(a);
    }
    s = Cancelled(hooks, "the precision plan");
    if (!s.ok()) return s;
    const KvPlan p = ApplyAll(base, r.actions, r.actions.size());
    auto c = evaluator.NllIncrease(p, 0, kReadAll);
    if (!c.ok()) return c.status();
    ++r.calibration_runs;
    s = evaluator.Accept(p, 0);
    if (!s.ok()) return s;
    current = *c;
    for (PlanAction& f : r.actions) f.cost = std::max(0.0, *c - base_total) / n_layers;
  }
  // The combined plan, scored for real; give steps back while it exceeds the budget.
  while (!floor_fits && !r.actions.empty()) {
    s = Cancelled(hooks, "the precision plan");
    if (!s.ok()) return s;
    Progress(hooks, "precision", 0, 1);
    const KvPlan p = ApplyAll(base, r.actions, r.actions.size());
    const int first = FirstPlanDifference(p, base);
    auto c = evaluator.NllIncrease(p, first, kReadAll);
    if (!c.ok()) return c.status();
    ++r.calibration_runs;
    if (*c <= budget) {
      s = evaluator.Accept(p, first);
      if (!s.ok()) return s;
      current = *c;
      break;
    }
    // Over: drop the least efficient steps until the estimate, scaled by how far off it was,
    // fits (at least one).
    double est = base_total;
    for (const PlanAction& a : r.actions) est += a.cost;
    const double scale = (*c - base_total) / std::max(est - base_total, kMinCost);
    do {
      est -= r.actions.back().cost;
      r.actions.pop_back();
    } while (!r.actions.empty() && base_total + (est - base_total) * scale > budget);
  }
  Progress(hooks, "precision", 1, 1);

  // 4. Sharing on top of the precision plan. A floor that fits was measured on held-out text:
  // a share's calibration cost then adds to that figure, not to the floor's calibration one
  // (at 64-token blocks calibration samples hold one quantised block and see a seventh of
  // int4's held-out cost), so the budget shares are scored against is lowered by the gap.
  const double share_budget = floor_fits ? budget - std::max(0.0, floor_heldout - current) : budget;
  KvPlan plan = ApplyAll(base, r.actions, r.actions.size());
  if (options.share && distances != nullptr && n_layers > 1) {
    const std::vector<LayerPair> pairs = OrderPairs(*distances, options.share_order, 0);
    std::vector<bool> dropped(pairs.size(), false);
    int step = 0;
    for (;;) {
      // The next K live candidates of the order.
      std::vector<size_t> batch;
      for (size_t k = 0; k < pairs.size() && int(batch.size()) < options.share_best_of; ++k) {
        if (dropped[k]) continue;
        const LayerPair& pr = pairs[k];
        if (plan.kv_source[pr.i] != pr.i) {
          dropped[k] = true;  // i shares already
          continue;
        }
        batch.push_back(k);
      }
      if (batch.empty()) break;
      Progress(hooks, "sharing", step, 0);
      int best = -1;
      PlanAction best_action;
      double best_total = 0;
      for (size_t k : batch) {
        s = Cancelled(hooks, "the sharing step");
        if (!s.ok()) return s;
        PlanAction a;
        a.kind = PlanAction::kShare;
        a.layer = pairs[k].i;
        a.source = pairs[k].j;
        a.bytes_saved = KvLayerBytesPerToken(g, plan.kv_types[a.layer]);
        const KvPlan p = Apply(plan, a);
        auto c = evaluator.NllIncrease(p, a.layer, options.early_reject ? share_budget : kReadAll);
        if (!c.ok()) return c.status();
        ++r.calibration_runs;
        if (*c > share_budget) {
          dropped[k] = true;
          continue;
        }
        a.cost = std::max(0.0, *c - current);
        if (best < 0 || Efficiency(a) > Efficiency(best_action)) {
          best = int(k);
          best_action = a;
          best_total = *c;
        }
      }
      if (best < 0) break;  // nothing within the budget this step: sharing ends
      const KvPlan p = Apply(plan, best_action);
      s = evaluator.Accept(p, best_action.layer);
      if (!s.ok()) return s;
      dropped[best] = true;
      plan = p;
      current = best_total;
      r.actions.push_back(best_action);
      ++step;
    }
  }
  r.calibration_increase = current;

  // 5. Held-out trim (never below the floor that fits: it was measured within the budget).
  const size_t min_keep = floor_fits ? size_t(n_layers) : 0;
  size_t keep = r.actions.size();
  std::vector<double> prefix_cost(r.actions.size() + 1, base_total);
  for (size_t k = 0; k < r.actions.size(); ++k) {
    prefix_cost[k + 1] = prefix_cost[k] + r.actions[k].cost;
  }
  for (int round = 0;; ++round) {
    s = Cancelled(hooks, "the held-out check");
    if (!s.ok()) return s;
    Progress(hooks, "held-out", round, options.max_heldout_rounds);
    if (floor_fits && keep == min_keep) {
      r.heldout_increase = floor_heldout;  // the floor itself, measured in step 1b
      break;
    }
    // A check may stop early once over the budget (it is then trimmed further) — except the
    // last resort's, whose figure the result would carry whatever it is.
    const KvPlan p = ApplyAll(base, r.actions, keep);
    auto h = heldout(p, options.early_reject && keep > min_keep ? budget : kReadAll);
    if (!h.ok()) return h.status();
    r.heldout_checks.push_back(*h);
    r.heldout_increase = *h;
    if (*h <= budget || keep == min_keep) break;
    if (round + 1 >= options.max_heldout_rounds) {
      keep = min_keep;  // out of guesses: the base plan (or the floor)
      continue;
    }
    // Held-out over calibration for this prefix; keep the longest prefix predicted to fit.
    const double ratio = (*h) / std::max(prefix_cost[keep], kMinCost);
    const double target = budget / std::max(ratio, kMinCost);
    size_t k = keep - 1;
    while (k > min_keep && prefix_cost[k] > target) --k;
    keep = k;
  }
  r.trimmed_actions = int(r.actions.size() - keep);
  r.actions.resize(keep);

  // 6. Grow on held-out slack: the calibration estimate may have left out precision steps the
  // held-out text allows, and step 5's guess from the held-out / calibration ratio may have
  // given back more than it had to (when it gave shares back, the bytes they saved may cost
  // less as precision). Try the precision steps not in the plan (on layers that still own), in
  // efficiency order: all of them, then the longest prefix that fits, found by bisection in at
  // most max_grow_rounds checks.
  if (r.heldout_increase <= budget) {
    const KvPlan now = ApplyAll(base, r.actions, r.actions.size());
    std::vector<PlanAction> missing;
    for (size_t k : order) {
      const PlanAction& a = steps[k];
      bool taken = false;
      for (const PlanAction& b : r.actions) {
        taken |= b.kind == PlanAction::kLowerType && b.layer == a.layer && b.type == a.type;
      }
      if (!taken && now.kv_source[a.layer] == a.layer) missing.push_back(a);
    }
    size_t lo = 0, hi = missing.size(), n = hi;  // a prefix of lo steps fits
    for (int round = 0; round < options.max_grow_rounds && n > lo; ++round) {
      s = Cancelled(hooks, "the held-out growth");
      if (!s.ok()) return s;
      Progress(hooks, "held-out growth", round, options.max_grow_rounds);
      std::vector<PlanAction> grown = r.actions;
      grown.insert(grown.end(), missing.begin(), missing.begin() + n);
      auto h =
          heldout(ApplyAll(base, grown, grown.size()), options.early_reject ? budget : kReadAll);
      if (!h.ok()) return h.status();
      r.heldout_checks.push_back(*h);
      if (*h <= budget) {
        lo = n;
        r.heldout_increase = *h;
      } else {
        hi = n - 1;
      }
      n = (lo + hi + 1) / 2;
    }
    r.actions.insert(r.actions.end(), missing.begin(), missing.begin() + lo);
    r.grown_actions = int(lo);
  }
  r.plan = ApplyAll(base, r.actions, r.actions.size());
  r.bytes_per_token = KvPlanBytesPerToken(g, r.plan);
  return r;
}

}  // namespace kvshare
