#include "search_service/calibrated_evaluator.h"

#include <memory>
#include <utility>

namespace kvshare {

CalibratedEvaluator::CalibratedEvaluator(ProjectionCalibrator& calibrator,
                                         std::string model_fingerprint, int n_layers, double ridge,
                                         DType type)
    : calibrator_(calibrator),
      fingerprint_(std::move(model_fingerprint)),
      ridge_(ridge),
      type_(type) {
  accepted_.resize(n_layers);
  for (int l = 0; l < n_layers; ++l) accepted_[l] = l;
}

absl::StatusOr<double> CalibratedEvaluator::Score(const std::vector<int>& kv_source,
                                                  int first_changed_layer) {
  absl::Status s = CheckEvaluatorCandidate(accepted_, kv_source, first_changed_layer);
  if (!s.ok()) return s;
  auto plain = SharingStrategy::Create(kv_source, fingerprint_);
  if (!plain.ok()) return plain.status();
  auto projections = calibrator_.Fit(*plain, ridge_, type_);
  if (!projections.ok()) return projections.status();
  auto with = plain->WithProjections(std::move(*projections));
  if (!with.ok()) return with.status();
  auto nll = calibrator_.ScoreNll(std::make_shared<const SharingStrategy>(std::move(*with)));
  if (!nll.ok()) return nll.status();
  return -(*nll - calibrator_.unshared_score_nll());
}

absl::Status CalibratedEvaluator::Accept(const std::vector<int>& kv_source,
                                         int first_changed_layer) {
  absl::Status s = CheckEvaluatorCandidate(accepted_, kv_source, first_changed_layer);
  if (!s.ok()) return s;
  accepted_ = kv_source;
  return absl::OkStatus();
}

}  // namespace kvshare
