// The calibration forward a strategy search repeats for every candidate, run from the first
// layer the candidate changes (docs/METHOD.md §3's cost rule). Both candidate metrics sit on it:
// CosineEvaluator (final-norm states against the unshared model's) and LossEvaluator (plus the
// NLL through the output projection).
//
// Create runs the unshared model once over all samples and keeps, per layer, the residual
// stream entering it (host memory, [samples * tokens][dim] per layer) and the K/V of every
// layer (DenseKvLayout). A candidate whose first changed layer is i starts from the accepted
// strategy's residual at layer i and runs layers i .. L-1 only, reading the K/V of layers < i
// from the accepted cache. Accept keeps the last candidate's states (no recompute). Samples run
// as one input each, batched so each RunLayers call has up to max_rows rows (fewer, bigger
// GEMMs).
//
// Owns its buffers; uses (does not own) the transformer and the calibration set, which must
// outlive it. Not thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/transformer.h"
#include "search_service/calibration.h"
#include "search_service/dense_kv_layout.h"

namespace kvshare {

class IncrementalForward {
 public:
  // Sees each batch of a forward after the final norm: `x` holds the final-norm states of
  // calibration rows [row0, row0 + rows) on the backend, [rows][dim].
  using FinalBatchFn = std::function<void(const float* x, size_t row0, int rows)>;

  // Runs the unshared model over `calibration` and accepts it; `identity_observer` (optional)
  // sees that forward (e.g. a KvAverager), `on_final` (optional) its final-norm batches.
  // InvalidArgument when the set is not samples x tokens ids (the message starts with `user`),
  // a sample is longer than max_rows or the model's context, or an id is out of the vocabulary.
  static absl::StatusOr<std::unique_ptr<IncrementalForward>> Create(
      Transformer& transformer, const CalibrationSet& calibration, const std::string& user,
      ForwardObserver* identity_observer = nullptr, const FinalBatchFn& on_final = nullptr);
  ~IncrementalForward();

  // Runs `kv_source` from first_changed_layer on over every sample; its final-norm states are
  // final_states() until the next Run. InvalidArgument (CheckEvaluatorCandidate) for a
  // kv_source that is not a valid strategy of this model, or a first_changed_layer outside
  // [1, L) or after a layer that differs from the accepted one.
  absl::Status Run(const std::vector<int>& kv_source, int first_changed_layer,
                   const FinalBatchFn& on_final = nullptr);
  // Whether (kv_source, first_changed_layer) is the candidate the last Run ran (and no Accept
  // came since): only that one can be accepted without running it again.
  bool IsLastRun(const std::vector<int>& kv_source, int first_changed_layer) const;
  // Makes the last candidate run the accepted strategy, keeping its states and K/V.
  // FailedPrecondition when IsLastRun(kv_source, first_changed_layer) is false.
  absl::Status Accept(const std::vector<int>& kv_source, int first_changed_layer);

  const std::vector<int>& accepted() const { return accepted_; }
  // Final-norm states, [samples * tokens][dim]: of the unshared model, and of the last Run.
  const std::vector<float>& reference_final() const { return reference_final_; }
  const std::vector<float>& final_states() const { return final_; }
  int n_layers() const { return n_layers_; }
  int dim() const { return dim_; }

 private:
  class LayerOutputCapture;
  IncrementalForward(Transformer& transformer, const CalibrationSet& calibration);
  absl::Status Init(const std::string& user, ForwardObserver* identity_observer,
                    const FinalBatchFn& on_final);
  // Runs layers [first, L) of the candidate set in kv_ over every sample (first == 0: from the
  // embeddings), storing each layer's output in candidate_hidden_ and the final-norm states in
  // final_.
  void RunFrom(int first, ForwardObserver* extra_observer, const FinalBatchFn& on_final);

  Transformer& transformer_;
  const CalibrationSet& calibration_;
  int dim_ = 0, n_layers_ = 0, batch_samples_ = 0;
  std::unique_ptr<DenseKvLayout> kv_;
  std::unique_ptr<Buffer> x_;  // [batch rows][dim], the residual stream being run
  std::vector<int32_t> positions_;
  std::vector<BatchSeq> seqs_;
  // Residual entering layer l, [samples * tokens][dim]: accepted strategy and last candidate.
  std::vector<std::vector<float>> accepted_hidden_, candidate_hidden_;
  std::vector<float> reference_final_;
  std::vector<float> final_;
  std::vector<int> accepted_;
  std::vector<int> run_;  // the last candidate run (its states are in candidate_*)
  int run_first_ = -1;    // -1: none to accept
};

}  // namespace kvshare
