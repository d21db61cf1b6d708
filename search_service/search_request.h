// A strategy search as a user asks for it (the `kvshare search` flags, or the search service's
// CreateSearchJobRequest), checked completely before any forward pass runs.
//
// Error messages name the field as the caller spells it (FieldStyle: the CLI flag "--threshold"
// or the proto field "threshold"), its value and the limit it breaks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "search_service/calibration.h"
#include "search_service/greedy_search.h"
#include "search_service/kv_plan_search.h"
#include "search_service/selection_rules.h"

namespace kvshare {

// How error messages spell a request's fields.
enum class FieldStyle {
  kCliFlag,     // "--target-layers"
  kProtoField,  // "target_layers"
};

struct SearchRequest {
  // The calibration text: `calibration_text` when set (the service has it inline or from its
  // catalog), else the file at `calibration_path`. `calibration_source` names the text in
  // errors when calibration_text is set (e.g. "calibration_corpus 'wikitext-2'").
  std::string calibration_path;
  std::optional<std::string> calibration_text;
  std::string calibration_source;
  CalibrationOptions calibration;
  // At most one of the two; neither means a ratio of kDefaultTargetRatio.
  std::optional<int> target_layers;
  std::optional<double> target_ratio;
  double threshold = 0.5;
  uint64_t seed = 0;
  FieldStyle field_style = FieldStyle::kCliFlag;
  // The selection rule (search_service/selection_rules.h). The default is the best rule
  // measured (docs/METHOD.md §5): nll, similar first, best-of-8, lazy. When unset, order,
  // best_of and lazy take the method's defaults (RuleDefaultsFor): for kvsharer the paper's
  // (dissimilar, 1, not lazy), so method "kvsharer" alone is the paper's search exactly.
  std::string method = "nll";
  std::optional<std::string> order;
  std::optional<int> best_of;
  std::optional<bool> lazy;
  std::optional<double> max_nll_increase;
  // Set: search a KV plan within this held-out perplexity increase, in percent
  // (kv_plan_search.h), instead of a sharing target.
  std::optional<double> max_ppl_increase;
  // With max_ppl_increase: the serving pool's block size the plan is for
  // (KvPlanOptions::block_tokens); unset = the engine's default.
  std::optional<int> kv_block_tokens;
  // Set and true: drop the attention of the target's layers instead of sharing caches
  // (drop_search.h), with linear substitutes unless drop_substitutes is false. Not with
  // max_ppl_increase; the rule fields are not used.
  std::optional<bool> drop_attention;
  std::optional<bool> drop_substitutes;
  // How the calibration forwards take activations in quantized matmuls (kernels/cpu/matmul.h
  // Activations); unset: the method's default (RuleDefaults), or KvPlanOptions::activations
  // for a KV plan search. The paper's search (kvsharer) and drop_attention are exact: anything
  // but f32 is refused there.
  std::optional<cpu::Activations> activations;
  static constexpr double kDefaultTargetRatio = 0.25;
};

// A method's pair order, candidates per step, laziness and activations when the request leaves
// them unset.
struct RuleDefaults {
  const char* order;
  int best_of;
  bool lazy;
  cpu::Activations activations;
};
// kvsharer: the paper's (dissimilar, 1, not lazy, exact f32 activations); nll (and any other
// name, which CheckSearchRequest rejects): similar, 8, lazy, one int8 digit (docs/METHOD.md §4:
// on SmolLM2, Gemma 3 and stories260K the strategies of two digits at every k measured but
// SmolLM2's 8 of 30, where its own is 0.087 nats/token better on held-out text; 0.83 of the
// time).
RuleDefaults RuleDefaultsFor(const std::string& method);
// The request's order, best_of, lazy and activations, or its method's defaults. A KV plan
// search (max_ppl_increase set) defaults best_of to KvPlanOptions::share_best_of and the
// activations to KvPlanOptions::activations whatever the method.
std::string EffectiveOrder(const SearchRequest& r);
int EffectiveBestOf(const SearchRequest& r);
bool EffectiveLazy(const SearchRequest& r);
cpu::Activations EffectiveActivations(const SearchRequest& r);

struct PreparedSearch {
  CalibrationSet calibration;
  GreedyOptions options;
  SelectionOptions selection;  // the rule; selection.greedy == options
  // Set when the request has max_ppl_increase: the KV plan search runs instead of the rule.
  // Its lower types are int8 and int4, its floor type k4v3, those the model's head_dim allows.
  std::optional<KvPlanOptions> plan;
};

// Checks everything that does not need the model: order, samples, tokens, threshold, ratio,
// and that the calibration text (or file) exists and is not empty. Returns the text.
absl::StatusOr<std::string> CheckSearchRequest(const SearchRequest& request);

// CheckSearchRequest, then what needs the model: the target against its layer count, tokens
// against its context, and the calibration set (lines that tokenise to nothing, too few
// qualifying lines).
absl::StatusOr<PreparedSearch> PrepareSearch(const SearchRequest& request, const Model& model,
                                             const Tokenizer& tokenizer);

}  // namespace kvshare
