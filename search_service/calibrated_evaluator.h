// Scores candidates as they would serve once calibrated (issue 18): each candidate strategy gets
// its output projections fitted on the fit set (projection_fit.h, one fixed ridge strength),
// and its score is minus the scoring-set NLL increase over the unshared model, with those
// projections. So the greedy rules (selection_rules.h: best-of-K, lazy, the NLL cap) pick
// sources that are worth reading after calibration, not before. The fit and scoring sets are
// disjoint from each other and from the search's calibration windows (projection_sets.h).
//
// Each Score fits and scores from scratch: a full forward over the fit set plus two extra
// single-layer passes per sharing layer, then a forward over the scoring set. Uses (does not
// own) the calibrator. Not thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "search_service/greedy_search.h"
#include "search_service/projection_fit.h"

namespace kvshare {

class CalibratedEvaluator : public Evaluator {
 public:
  CalibratedEvaluator(ProjectionCalibrator& calibrator, std::string model_fingerprint, int n_layers,
                      double ridge, DType type);

  // InvalidArgument (CheckEvaluatorCandidate) for a candidate that is not a valid strategy of
  // this model or not an extension of the accepted one from first_changed_layer.
  absl::StatusOr<double> Score(const std::vector<int>& kv_source, int first_changed_layer) override;
  absl::Status Accept(const std::vector<int>& kv_source, int first_changed_layer) override;

 private:
  ProjectionCalibrator& calibrator_;
  const std::string fingerprint_;
  const double ridge_;
  const DType type_;
  std::vector<int> accepted_;
};

}  // namespace kvshare
