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
  std::string order = "dissimilar";
  uint64_t seed = 0;
  FieldStyle field_style = FieldStyle::kCliFlag;
  // The selection rule (search_service/selection_rules.h); the defaults are the paper's.
  std::string method = "kvsharer";
  int best_of = 1;
  bool lazy = false;
  std::optional<double> max_nll_increase;
  // Set: search a KV plan within this held-out perplexity increase, in percent
  // (kv_plan_search.h), instead of a sharing target.
  std::optional<double> max_ppl_increase;
  static constexpr double kDefaultTargetRatio = 0.25;
};

struct PreparedSearch {
  CalibrationSet calibration;
  GreedyOptions options;
  SelectionOptions selection;  // the rule; selection.greedy == options
  // Set when the request has max_ppl_increase: the KV plan search runs instead of the rule.
  // Its lower types are int8 and int4 (int4 only where the model's head_dim allows it).
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
