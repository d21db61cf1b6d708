// A strategy search as a user asks for it (the `kvshare search` flags; later the search
// service's request), checked completely before any forward pass runs.
//
// Error messages name the field as the CLI flag spells it (e.g. "--threshold"), its value and
// the limit it breaks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "search_service/calibration.h"
#include "search_service/greedy_search.h"

namespace kvshare {

struct SearchRequest {
  std::string calibration_path;
  CalibrationOptions calibration;
  // At most one of the two; neither means a ratio of kDefaultTargetRatio.
  std::optional<int> target_layers;
  std::optional<double> target_ratio;
  double threshold = 0.5;
  std::string order = "dissimilar";
  uint64_t seed = 0;
  static constexpr double kDefaultTargetRatio = 0.25;
};

struct PreparedSearch {
  CalibrationSet calibration;
  GreedyOptions options;
};

// Checks everything that does not need the model: order, samples, tokens, threshold, ratio,
// and that the calibration file exists and is not empty. Returns the file's text.
absl::StatusOr<std::string> CheckSearchRequest(const SearchRequest& request);

// CheckSearchRequest, then what needs the model: the target against its layer count, tokens
// against its context, and the calibration set (lines that tokenise to nothing, too few
// qualifying lines).
absl::StatusOr<PreparedSearch> PrepareSearch(const SearchRequest& request, const Model& model,
                                             const Tokenizer& tokenizer);

}  // namespace kvshare
