// The two text sets of the projection calibration (issue 18), taken from the calibration text
// after a given line so that they are disjoint from the search's calibration windows and from
// the held-out slice: first the scoring set (its own windows: the ridge strength and, in the
// calibrated search, candidates are judged there), then the fit set (where W_o' is fitted).
// Each is a CalibrationSet (calibration.h's rule: lines of at least `tokens` tokens, each cut
// to exactly `tokens`), with source_lines numbered in the whole text.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"
#include "search_service/calibration.h"
#include "search_service/heldout_quality.h"

namespace kvshare {

struct ProjectionSetOptions {
  CalibrationOptions fit{36, 128};    // 4608 tokens
  CalibrationOptions score{16, 128};  // 2048 tokens
  // true: each set is samples contiguous windows of the text (BOS, then tokens - 1 text tokens
  // running on from the previous window), not one line per sample: windows as long as the
  // serving context, where attention reaches far back, whatever the text's line lengths.
  bool contiguous = false;
};

struct ProjectionSets {
  CalibrationSet fit, score;
};

// Sets from the lines after `after_line` (1-based; 0: from the start). InvalidArgument when
// the text after it has too few qualifying lines (saying how many).
absl::StatusOr<ProjectionSets> BuildProjectionSets(std::string_view text,
                                                   const Tokenizer& tokenizer, int after_line,
                                                   const ProjectionSetOptions& options,
                                                   const std::string& source);

// A line at or after the end of the held-out slice that starts after `slice_after_line` and
// holds `tokens` tokens: lines are tokenised one by one until their tokens (plus one per line
// break) reach `tokens`, then `margin_lines` more are added (line-by-line and whole-text
// tokenisation differ by a few tokens at line ends). The projection sets start after it.
int HeldoutEndLine(std::string_view text, const Tokenizer& tokenizer, int slice_after_line,
                   int64_t tokens, int margin_lines = 16);

}  // namespace kvshare
