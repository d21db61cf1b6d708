#include "search_service/cosine_evaluator.h"

#include <cmath>
#include <utility>

namespace kvshare {

double MeanSampleCosine(const std::vector<float>& a, const std::vector<float>& b, int samples,
                        size_t per_sample, std::vector<double>* per_sample_cosines) {
  if (per_sample_cosines != nullptr) per_sample_cosines->assign(samples, 0.0);
  double total = 0;
  for (int n = 0; n < samples; ++n) {
    const float* x = a.data() + n * per_sample;
    const float* y = b.data() + n * per_sample;
    double xy = 0, xx = 0, yy = 0;
    for (size_t k = 0; k < per_sample; ++k) {
      xy += double(x[k]) * y[k];
      xx += double(x[k]) * x[k];
      yy += double(y[k]) * y[k];
    }
    const double cosine = (xx > 0 && yy > 0) ? xy / (std::sqrt(xx) * std::sqrt(yy)) : 0.0;
    if (per_sample_cosines != nullptr) (*per_sample_cosines)[n] = cosine;
    total += cosine;
  }
  return total / samples;
}

CosineEvaluator::CosineEvaluator(const CalibrationSet& calibration,
                                 std::unique_ptr<IncrementalForward> forward)
    : calibration_(calibration), forward_(std::move(forward)) {}

CosineEvaluator::~CosineEvaluator() = default;

absl::StatusOr<std::unique_ptr<CosineEvaluator>> CosineEvaluator::Create(
    Transformer& transformer, const CalibrationSet& calibration,
    ForwardObserver* identity_observer) {
  auto forward =
      IncrementalForward::Create(transformer, calibration, "cosine evaluator", identity_observer);
  if (!forward.ok()) return forward.status();
  return std::unique_ptr<CosineEvaluator>(new CosineEvaluator(calibration, std::move(*forward)));
}

absl::StatusOr<double> CosineEvaluator::Score(const std::vector<int>& kv_source,
                                              int first_changed_layer) {
  absl::Status s = forward_->Run(kv_source, first_changed_layer);
  if (!s.ok()) return s;
  return MeanSampleCosine(forward_->reference_final(), forward_->final_states(),
                          calibration_.samples, size_t(calibration_.tokens) * forward_->dim(),
                          &sample_scores_);
}

absl::Status CosineEvaluator::Accept(const std::vector<int>& kv_source, int first_changed_layer) {
  if (!forward_->IsLastRun(kv_source, first_changed_layer)) {
    // Not the candidate just scored: compute its states first.
    auto score = Score(kv_source, first_changed_layer);
    if (!score.ok()) return score.status();
  }
  return forward_->Accept(kv_source, first_changed_layer);
}

}  // namespace kvshare
