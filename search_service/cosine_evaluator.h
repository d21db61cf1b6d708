// The KVSharer candidate score on a real model (docs/METHOD.md §3): for each calibration sample,
// the cosine similarity between the final-norm hidden states (all tokens flattened into one vector)
// of the unshared model and of the candidate, averaged over samples (in double, in sample order).
//
// A metric over IncrementalForward's final states: Create runs the unshared model once, and a
// candidate runs from its first changed layer only (see incremental_forward.h for the cost).
//
// Owns its forward; uses (does not own) the transformer and the calibration set, which must
// outlive it. Not thread-safe.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/transformer.h"
#include "search_service/calibration.h"
#include "search_service/greedy_search.h"
#include "search_service/incremental_forward.h"

namespace kvshare {

// The mean over `samples` of the cosine between a[n] and b[n], each sample `per_sample` floats,
// summed in double in sample order; a zero vector has no direction and counts as orthogonal
// (0) rather than NaN. `per_sample_cosines` (optional) gets each sample's cosine.
double MeanSampleCosine(const std::vector<float>& a, const std::vector<float>& b, int samples,
                        size_t per_sample, std::vector<double>* per_sample_cosines = nullptr);

class CosineEvaluator : public Evaluator {
 public:
  // Runs the unshared model over `calibration`; `identity_observer` (optional) sees that
  // forward (e.g. a KvAverager). InvalidArgument when a sample is longer than max_rows or
  // the model's context, or an id is out of the vocabulary.
  static absl::StatusOr<std::unique_ptr<CosineEvaluator>> Create(
      Transformer& transformer, const CalibrationSet& calibration,
      ForwardObserver* identity_observer = nullptr);
  ~CosineEvaluator() override;

  // InvalidArgument for a kv_source that is not a valid strategy of this model, or a
  // first_changed_layer outside [1, L) or after a layer that differs from the accepted one.
  absl::StatusOr<double> Score(const std::vector<int>& kv_source, int first_changed_layer) override;
  absl::Status Accept(const std::vector<int>& kv_source, int first_changed_layer) override;

  const std::vector<int>& accepted() const { return forward_->accepted(); }
  // Per-sample cosines of the last Score call.
  const std::vector<double>& last_sample_scores() const { return sample_scores_; }

 private:
  CosineEvaluator(const CalibrationSet& calibration, std::unique_ptr<IncrementalForward> forward);

  const CalibrationSet& calibration_;
  std::unique_ptr<IncrementalForward> forward_;
  std::vector<double> sample_scores_;
};

}  // namespace kvshare
