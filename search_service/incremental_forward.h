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
// KV plans (issue 17, docs/METHOD.md §6): a candidate may also give each layer a KV type. An
// owning layer of a lowered type has its K/V replaced, right after they are written and before
// any attention reads them, by what a paged pool of that type holds for them (KvRoundTrip over
// blocks of kv_block_tokens positions), so a sharing layer reading it reads the same values.
// Without types (Run/Accept, the sharing searches) the K/V stay fp32 and nothing changes.
//
// A best-of-K step scores several candidates and then accepts one that is usually not the last
// run. Created with `keep_bank`, the forward can set a run aside (KeepLastRun: its residuals and
// K/V move to a third bank, no copy), so accepting it later needs no second run; the sharing
// search keeps the best-scoring candidate of each step (LossEvaluator), which on SmolLM2 at 8
// of 30 layers saves 7 of the 53 forwards.
//
// Owns its buffers; uses (does not own) the transformer and the calibration set, which must
// outlive it. Not thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/query_weights.h"
#include "common/engine/transformer.h"
#include "kernels/kv_type.h"
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
      ForwardObserver* identity_observer = nullptr, const FinalBatchFn& on_final = nullptr,
      bool keep_bank = false);
  ~IncrementalForward();

  // Runs `kv_source` with the accepted KV types from first_changed_layer on over every sample;
  // its final-norm states are final_states() until the next Run. InvalidArgument
  // (CheckEvaluatorCandidate) for a kv_source that is not a valid strategy of this model, or a
  // first_changed_layer outside [1, L) or after a layer that differs from the accepted one.
  absl::Status Run(const std::vector<int>& kv_source, int first_changed_layer,
                   const FinalBatchFn& on_final = nullptr);
  // Whether (kv_source, first_changed_layer) is the candidate the last Run ran (and no Accept
  // came since): only that one can be accepted without running it again.
  bool IsLastRun(const std::vector<int>& kv_source, int first_changed_layer) const;
  // Makes the last candidate run (or the kept one) the accepted strategy, keeping its states and
  // K/V. FailedPrecondition when it is neither IsLastRun nor IsKept.
  absl::Status Accept(const std::vector<int>& kv_source, int first_changed_layer);

  // Sets the last run aside (replacing any run kept before) so that it can still be accepted
  // after other runs; it is then no longer the last run. FailedPrecondition without the kept
  // bank (Create's keep_bank) or when there is no complete run since the last Accept. Any
  // Accept forgets the kept run.
  absl::Status KeepLastRun();
  // Whether (kv_source, first_changed_layer) with the accepted types is the kept run.
  bool IsKept(const std::vector<int>& kv_source, int first_changed_layer) const;

  // The same for a KV plan: kv_types has one entry per layer (an owning layer's is the type its
  // K/V are stored as; the others' are not read) or is empty (fp32, as Run). first_changed_layer
  // may be 0 here (a change of layer 0's type) and must not be after the first layer whose
  // source, or owning layer's type, differs from the accepted plan's. InvalidArgument otherwise,
  // or for a type the geometry cannot hold (ValidateKvGeometry).
  // `stop` (optional) is asked after every batch of samples but the last, with the samples
  // run so far (a prefix of the set); returning true ends the run there. A run ended early
  // holds final states for those samples only (last_run_samples()) and cannot be accepted.
  using StopFn = std::function<bool(int samples_run)>;
  absl::Status RunPlan(const std::vector<int>& kv_source, const std::vector<KvType>& kv_types,
                       int first_changed_layer, const FinalBatchFn& on_final = nullptr,
                       const StopFn& stop = nullptr);
  absl::Status AcceptPlan(const std::vector<int>& kv_source, const std::vector<KvType>& kv_types,
                          int first_changed_layer);
  // Positions per paged block the types are simulated with (the serving pool's; default 16).
  void set_kv_block_tokens(int block_tokens) { kv_block_tokens_ = block_tokens; }

  const std::vector<int>& accepted() const { return accepted_; }
  const std::vector<KvType>& accepted_types() const { return accepted_types_; }
  // Final-norm states, [samples * tokens][dim]: of the unshared model, and of the last Run.
  const std::vector<float>& reference_final() const { return reference_final_; }
  const std::vector<float>& final_states() const { return final_; }
  int n_layers() const { return n_layers_; }
  // Samples the last run (or Create's) covered: all of them unless a StopFn ended it.
  int last_run_samples() const { return run_samples_; }
  int dim() const { return dim_; }

 private:
  class LayerOutputCapture;
  IncrementalForward(Transformer& transformer, const CalibrationSet& calibration);
  absl::Status Init(const std::string& user, ForwardObserver* identity_observer,
                    const FinalBatchFn& on_final, bool keep_bank);
  // Runs layers [first, L) of the candidate set in kv_ over every sample (first == 0: from the
  // embeddings), storing each layer's output in candidate_hidden_ and the final-norm states in
  // final_, batch by batch until `stop` (optional) says so; returns the samples run.
  int RunFrom(int first, ForwardObserver* extra_observer, const FinalBatchFn& on_final,
              const StopFn& stop = nullptr);
  // Whether (kv_source, kv_types, first_changed_layer) is the last complete run / the kept one.
  bool RunIs(const std::vector<int>& kv_source, const std::vector<KvType>& kv_types,
             int first_changed_layer) const;
  bool KeptIs(const std::vector<int>& kv_source, const std::vector<KvType>& kv_types,
              int first_changed_layer) const;
  // RunPlan's argument checks.
  absl::Status CheckPlan(const std::vector<int>& kv_source, const std::vector<KvType>& kv_types,
                         int first_changed_layer) const;
  // Residuals entering layers >= first + 1 (>= 0 when first == 0): what a run from layer first
  // wrote, and what accepting or keeping it moves.
  static int FirstWrittenResidual(int first) { return first == 0 ? 0 : first + 1; }
  // Replaces the K/V input `input` of the running batch just wrote for owning `layer` (its n
  // positions) by what a pool of `type` returns for them.
  void RoundTripBlock(int layer, int input, KvType type, int n);

  Transformer& transformer_;
  const CalibrationSet& calibration_;
  int dim_ = 0, n_layers_ = 0, batch_samples_ = 0;
  std::unique_ptr<DenseKvLayout> kv_;
  std::unique_ptr<Buffer> x_;  // [batch rows][dim], the residual stream being run
  std::vector<int32_t> positions_;
  std::vector<BatchSeq> seqs_;
  // Residual entering layer l, [samples * tokens][dim]: accepted strategy and last candidate.
  std::vector<std::vector<float>> accepted_hidden_, candidate_hidden_;
  // The kept run's residuals (empty without the kept bank), its strategy and types, and the
  // layer it ran from (-1: none kept).
  std::vector<std::vector<float>> kept_hidden_;
  std::vector<int> kept_;
  std::vector<KvType> kept_types_;
  int kept_first_ = -1;
  std::vector<float> reference_final_;
  std::vector<float> final_;
  std::vector<int> accepted_;
  std::vector<int> run_;  // the last candidate run (its states are in candidate_*)
  int run_first_ = -1;    // -1: none to accept
  int run_samples_ = 0;   // samples the last run covered
  // KV types (empty: fp32) of the accepted plan and of the last run; running_types_ points at
  // the types of the forward in progress (read by LayerOutputCapture::OnKv).
  std::vector<KvType> accepted_types_, run_types_;
  const std::vector<KvType>* running_types_ = nullptr;
  int kv_block_tokens_ = 16;
  // int4a's query weights, measured (query_weights.h) when a plan first names int4a.
  std::shared_ptr<const QueryWeights> query_weights_;
  std::vector<float> kv_host_;  // one dense block, for the round trip
};

}  // namespace kvshare
