// The KV plan search (issue 17, docs/METHOD.md §6): per layer, which layer's cache it reads and
// in what precision its own is stored, chosen to save the most KV bytes per token within a
// held-out perplexity budget.
//
//   1. Start from the base plan: every layer owns, stored as options.base_type (f16).
//   1b. The floors (options.floor_first): measure on held-out text (a check stopping early once
//      over the budget beyond doubt, options.early_reject) the plan with every layer at
//      one type — the floor types smaller than the smallest lower type, smallest first, then
//      that type, then the floor types between it and the least a per-layer plan stores with
//      one layer a type above it (int4a beside int4) — until one fits the budget. No per-layer
//      choice among the lower types stores fewer bytes, so the first that fits is the precision
//      plan (scored once on calibration text), steps 2, 3 and 6 are skipped, and step 5 never
//      trims below it (nor is the base plan scored on calibration text: the floor's steps cost
//      their share of its increase over the unshared model). When none fits the search scores
//      the base plan and goes on from step 2 (one held-out check spent per floor).
//   2. Sensitivity: score, on the calibration set, the base plan with one layer lowered to each
//      of options.lower_types (one candidate per layer and type, from that layer on).
//   3. Precision: per layer the steps base -> int8 -> int4 (a type that costs more than a
//      smaller one is skipped), taken across layers in order of bytes saved per nat of
//      calibration NLL added (ties: the earlier layer, then the wider type) while the summed
//      estimate stays within the budget; the combined plan is then scored for real, and steps
//      are given back from the least efficient while it exceeds the budget.
//   4. Sharing: while budget remains, best-of-K over the pair order (similar first by default):
//      score the next K candidates (layer i reads j's cache, on top of the accepted plan),
//      drop those over the budget for good, accept the one saving the most bytes per nat; stop
//      at the first step with no candidate within the budget. A candidate's scoring stops
//      after a batch of samples once it is over the budget beyond doubt (options.early_reject).
//      After a floor that fits, "within the budget" counts the floor at its held-out figure:
//      the budget is lowered by how far that exceeds the floor's calibration increase.
//   5. Trim on held-out text: measure the plan's held-out NLL increase; while it exceeds the
//      budget, give back actions from the last accepted (shares first, then the least
//      efficient precision steps), using the held-out / calibration ratio to guess how many,
//      and measure again (at most max_heldout_rounds guesses; then the base plan). A check
//      over the budget beyond doubt may stop early (options.early_reject); the guess then
//      uses the increase on the text it read.
//   6. Grow: add the precision steps not in the plan (left out by the calibration estimate, or
//      given back by step 5's guess) while the held-out increase stays within the budget
//      (calibration and held-out text can disagree on what a layer's precision costs): all of
//      them, else the longest prefix in efficiency order that fits, by bisection (at most
//      max_grow_rounds checks).
// The budget is options.max_ppl_increase percent of perplexity, i.e. ln(1 + P/100) nats/token.
//
// Deterministic for a deterministic evaluator. The scoring is behind PlanEvaluator and the
// held-out measure behind a function, so the rules are tested with fakes
// (tests/search/kv_plan_search_test.cc).
#pragma once

#include <atomic>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/matmul.h"
#include "kernels/kv_type.h"
#include "search_service/greedy_search.h"
#include "search_service/layer_distance.h"

namespace kvshare {

// A KV plan: kv_source as in SharingStrategy, and one type per layer (a sharing layer's entry
// is its source's type).
struct KvPlan {
  std::vector<int> kv_source;
  std::vector<KvType> kv_types;
  bool operator==(const KvPlan& o) const {
    return kv_source == o.kv_source && kv_types == o.kv_types;
  }
};

// Pool bytes per position an owning layer of `type` stores: its block's bytes over the block's
// positions (g.block_tokens; int4's per-sequence f16 tail is not per token and not counted).
double KvLayerBytesPerToken(KvGeometry g, KvType type);
// The sum over the plan's owning layers.
double KvPlanBytesPerToken(const KvGeometry& g, const KvPlan& plan);
// The first layer at which two plans of the same model differ (source, or an owning layer's
// type); n_layers when equal.
int FirstPlanDifference(const KvPlan& a, const KvPlan& b);

// Scores plans on the calibration set against an accepted plan (the base plan at the start).
class PlanEvaluator {
 public:
  virtual ~PlanEvaluator() = default;
  // Mean calibration NLL increase over the unshared fp32 model, nats/token, of `plan`, which
  // equals the accepted plan below first_changed_layer. `reject_above`: the scoring may stop
  // before the end of the set once the plan is over this many nats beyond doubt
  // (early_reject.h) and return the increase on the samples it ran, which is then above it;
  // +infinity runs them all.
  virtual absl::StatusOr<double> NllIncrease(const KvPlan& plan, int first_changed_layer,
                                             double reject_above) = 0;
  virtual absl::Status Accept(const KvPlan& plan, int first_changed_layer) = 0;
};

// Held-out NLL increase (nats/token) of a plan over the unshared model. `reject_above`: the
// check may stop before the end of its text once the plan is over this many nats beyond doubt
// (early_reject.h) and return the increase on the text it read, which is then
// above it; +infinity reads all of it.
using HeldoutIncreaseFn =
    std::function<absl::StatusOr<double>(const KvPlan& plan, double reject_above)>;

struct KvPlanOptions {
  double max_ppl_increase = 2.0;  // percent of held-out perplexity; > 0
  KvType base_type = KvType::kF16;
  // Each smaller than base (KeepHoldableTypes drops those a model's heads cannot hold).
  std::vector<KvType> lower_types = {KvType::kInt8, KvType::kInt4};
  // Types tried only as uniform floors in step 1b, never per layer. k4v3 is one: its per-layer
  // cost hides in calibration noise (short samples hold one or two quantised blocks) and a scan
  // with it ranks "free" k4v3 steps first, which held-out text then rejects — on SmolLM2 at 1%
  // it ended at 0.658 of f16 instead of 0.341 (docs/METHOD.md §6). int4a is the other: int4's
  // bytes and a few more, at about half its cost, tried when int4 alone does not fit.
  std::vector<KvType> floor_types = {KvType::kK4V3, KvType::kInt4A};
  bool share = true;  // step 4
  int share_best_of = 8;
  PairOrder share_order = PairOrder::kSimilar;
  int max_heldout_rounds = 4;
  int max_grow_rounds = 3;
  bool floor_first = true;  // step 1b
  // The held-out checks (but step 5's last resort) and step 4's sharing candidates may stop
  // early once over the budget beyond doubt (reject_above of HeldoutIncreaseFn and
  // PlanEvaluator::NllIncrease; early_reject.h). A stopped check only ever rejects: every
  // figure a result carries comes from one that read all of its text.
  bool early_reject = true;
  // How the runner's forwards (calibration and held-out, kv_plan_runner.h) take activations in
  // quantized matmuls. Two int8 digits: about 16 bits, ~1.5x the exact mode's prefill speed on
  // SmolLM2, its unshared held-out NLL within 3e-5 nats of the exact one (docs/METHOD.md §6);
  // one int8 digit moves it by 0.014, more than a 1% budget.
  cpu::Activations activations = cpu::Activations::kInt8x2;
  // RunKvPlanStrategySearch: the serving pool's block size the plan is for (the workers'
  // --block-tokens), which the types are simulated and measured with (int4 quantises K over a
  // block). SearchKvPlan takes it from its geometry instead.
  int block_tokens = 16;
  double budget_nats() const { return std::log1p(max_ppl_increase / 100.0); }
  // The lower types, then the floor types: every type a plan may store.
  std::vector<KvType> all_types() const {
    std::vector<KvType> all = lower_types;
    all.insert(all.end(), floor_types.begin(), floor_types.end());
    return all;
  }
};

// The CLI/proto checks: budget > 0 and finite (at most 1000%), best-of >= 1, block_tokens in
// [1, 1024], lower types each smaller than the base type. InvalidArgument naming the field as
// `flag_prefix` spells it.
absl::Status ValidateKvPlanOptions(const KvPlanOptions& options, bool cli_flags = true);

// The entries of `types` a pool of g's block size and heads can hold (ValidateKvGeometry: int4
// needs head_dim % 32 == 0, k4v3 head_dim % 64 == 0, int4a head_dim % 32 == 0 and block_tokens
// % 8 == 0), in order.
std::vector<KvType> HoldableKvTypes(const std::vector<KvType>& types, KvGeometry g);
// HoldableKvTypes on both the lower and the floor types.
void KeepHoldableTypes(KvPlanOptions* options, const KvGeometry& g);

// A plan that may lower a layer to int4, int4a or k4v3 needs calibration samples of at least
// 2 x block_tokens tokens: they keep block 0 in f16, so a shorter sample holds no quantised
// block and the search could not see what they cost. InvalidArgument naming both numbers (as
// --tokens and
// --block-tokens, or tokens and kv_block_tokens).
absl::Status CheckPlanCalibration(const KvPlanOptions& options, int calibration_tokens,
                                  bool cli_flags = true);

struct PlanAction {
  enum Kind { kLowerType, kShare } kind = kLowerType;
  int layer = 0;
  KvType type = KvType::kF16;  // kLowerType: the new type
  int source = 0;              // kShare: the layer whose cache `layer` reads
  double bytes_saved = 0;      // per token
  double cost = 0;             // calibration NLL increase it adds (kLowerType: alone, estimated)
};
std::string PlanActionString(const PlanAction& a);  // "12:int4" or "7->3"

struct KvPlanSearchResult {
  KvPlan plan;
  std::vector<PlanAction> actions;  // in the plan, in acceptance order
  double bytes_per_token = 0, base_bytes_per_token = 0;
  double calibration_increase = 0;     // of the plan after step 4 (before any held-out trim)
  double heldout_increase = 0;         // of the final plan
  std::vector<double> heldout_checks;  // every held-out measure, in order
  int trimmed_actions = 0;             // given back in step 5
  int grown_actions = 0;               // added in step 6 (the last ones in `actions`)
  int calibration_runs = 0;
};

struct KvPlanHooks {
  // "floor", "sensitivity", "precision", "sharing", "held-out", "held-out growth" with done /
  // total units of the phase.
  std::function<void(const std::string& phase, int done, int total)> progress;
  const std::atomic<bool>* cancel = nullptr;  // read before every forward: Cancelled
};

// Steps 1-5 for a model of `n_layers` layers whose pool blocks have geometry `g` (block_tokens,
// heads, head_dim; the type is ignored). `distances` may be null (no sharing). Errors:
// ValidateKvPlanOptions, a lower type g cannot hold (ValidateKvGeometry; HoldableKvTypes filters
// them), evaluator and held-out failures, Cancelled.
absl::StatusOr<KvPlanSearchResult> SearchKvPlan(const KvGeometry& g, int n_layers,
                                                const KvPlanOptions& options,
                                                PlanEvaluator& evaluator,
                                                const LayerDistances* distances,
                                                const HeldoutIncreaseFn& heldout,
                                                const KvPlanHooks& hooks = {});

}  // namespace kvshare
