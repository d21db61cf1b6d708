// The KVSharer candidate score on a real model (DESIGN.md §1): for each calibration sample, the
// cosine similarity between the final-norm hidden states (all tokens flattened into one
// vector) of the unshared model and of the candidate, averaged over samples (in double, in
// sample order).
//
// Cost: Create runs the unshared model once over all samples and keeps, per layer, the
// residual stream entering it (host memory, [samples * tokens][dim] per layer) and the K/V of
// every layer (DenseKvLayout). A candidate whose first changed layer is i starts from the
// accepted strategy's residual at layer i and runs layers i .. L-1 only, reading the K/V of
// layers < i from the accepted cache. Accept keeps the candidate's states (no recompute).
// Samples run as one input each, batched so each RunLayers call has up to max_rows rows
// (fewer, bigger GEMMs).
//
// Owns its buffers; uses (does not own) the transformer and the calibration set, which must
// outlive it. Not thread-safe.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/transformer.h"
#include "search_service/calibration.h"
#include "search_service/dense_kv_layout.h"
#include "search_service/greedy_search.h"

namespace kvshare {

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

  const std::vector<int>& accepted() const { return accepted_; }
  // Per-sample cosines of the last Score call.
  const std::vector<double>& last_sample_scores() const { return sample_scores_; }

 private:
  class LayerOutputCapture;
  CosineEvaluator(Transformer& transformer, const CalibrationSet& calibration);
  absl::Status Init(ForwardObserver* identity_observer);
  // Runs layers [first, L) of the current candidate over every sample (first == 0: from the
  // embeddings), storing each layer's output in candidate_hidden_ and returning the
  // per-sample cosines against the reference (or storing the reference when first == 0).
  absl::Status RunCandidate(int first, ForwardObserver* extra_observer);

  Transformer& transformer_;
  const CalibrationSet& calibration_;
  int dim_ = 0, n_layers_ = 0, batch_samples_ = 0;
  std::unique_ptr<DenseKvLayout> kv_;
  std::unique_ptr<Buffer> x_;  // [batch rows][dim], the residual stream being run
  std::vector<int32_t> positions_;
  std::vector<BatchSeq> seqs_;
  // Residual entering layer l, [samples * tokens][dim]: accepted strategy and last candidate.
  std::vector<std::vector<float>> accepted_hidden_, candidate_hidden_;
  std::vector<float> reference_final_;  // unshared model's final-norm states
  std::vector<float> final_;            // a batch's final-norm states (host)
  std::vector<double> sample_scores_;
  std::vector<int> accepted_;
  std::vector<int> scored_;  // the last candidate scored (its states are in candidate_*)
  int scored_first_ = -1;
};

}  // namespace kvshare
