// Scores candidate strategies by what they do to the model's predictions on the calibration
// set, for the selection rules beyond the paper's (selection_rules.h):
//   - nll:    the mean next-token NLL of the calibration samples (targets: positions 1 .. T-1
//             of each sample), reported against the unshared model's;
//   - cosine: the paper's score (mean per-sample cosine of the flattened final-norm hidden
//             states), computed the same way as CosineEvaluator.
// Every Score computes both (last()); Score returns the one the evaluator was made for, in the
// "higher is better" form the greedy rules compare with a threshold:
//   kCosine: the mean cosine;      kNllIncrease: -(nll - unshared nll), in nats/token.
//
// A metric over IncrementalForward's final states, like CosineEvaluator: its cost (the accepted
// strategy's residual stream is kept per layer; a candidate runs from its first changed layer
// only) plus, for the NLL, the output projection of every calibration row, in chunks of up to
// 128 rows. The paper's `--method kvsharer` keeps
// using CosineEvaluator untouched; this class exists so the new rules do not change it.
//
// Owns its forward and buffers; uses (does not own) the transformer and the calibration set, which
// must outlive it. Not thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/transformer.h"
#include "search_service/calibration.h"
#include "search_service/early_reject.h"
#include "search_service/greedy_search.h"
#include "search_service/incremental_forward.h"

namespace kvshare {

enum class CandidateMetric {
  kCosine,       // the paper's score
  kNllIncrease,  // minus the calibration NLL increase over the unshared model
};

// Both measures of one strategy on the calibration set.
struct CalibrationLoss {
  double cosine = 1.0;  // mean per-sample cosine of final-norm states to the unshared model's
  double nll = 0.0;     // mean next-token NLL, nats/token
  // The samples these cover (the whole set unless an early reject stopped the run: a prefix)
  // and the unshared model's mean NLL over them.
  int samples = 0;
  double unshared_nll = 0.0;
  double nll_increase() const { return nll - unshared_nll; }
};

class LossEvaluator : public Evaluator {
 public:
  // Runs the unshared model over `calibration` (identity_observer, optional, sees that
  // forward). InvalidArgument when a sample is longer than the transformer's max_rows or the
  // model's context, when samples have fewer than 2 tokens (no NLL target), or an id is out of
  // the vocabulary.
  static absl::StatusOr<std::unique_ptr<LossEvaluator>> Create(
      Transformer& transformer, const CalibrationSet& calibration, CandidateMetric metric,
      ForwardObserver* identity_observer = nullptr, bool keep_best = false);
  ~LossEvaluator() override;

  // InvalidArgument for an invalid strategy of this model, or a first_changed_layer outside
  // [1, L) or after a layer that differs from the accepted strategy.
  absl::StatusOr<double> Score(const std::vector<int>& kv_source, int first_changed_layer) override;
  absl::Status Accept(const std::vector<int>& kv_source, int first_changed_layer) override;

  // Both measures of any valid strategy, scored against the accepted one from the first layer
  // where they differ (the identity when they do not differ at all). Leaves the accepted
  // strategy as it was.
  absl::StatusOr<CalibrationLoss> Measure(const std::vector<int>& kv_source);

  // KV plans (IncrementalForward::RunPlan; docs/METHOD.md §6): both measures of kv_source with
  // per-layer kv_types, run from first_changed_layer (0 allowed) against the accepted plan;
  // AcceptPlan keeps it (running it again when it is not the one last scored). Score and
  // Accept above keep the accepted plan's types, so a sharing candidate is scored on top of
  // the accepted precision.
  // With `reject`, the run may stop after a batch of samples once the plan's NLL increase is
  // over reject->above_nats beyond doubt (early_reject.h, the samples' mean NLL increases being
  // the units); the result then covers that prefix of the samples (CalibrationLoss::samples).
  absl::StatusOr<CalibrationLoss> ScorePlan(const std::vector<int>& kv_source,
                                            const std::vector<KvType>& kv_types,
                                            int first_changed_layer,
                                            const EarlyReject* reject = nullptr);
  absl::Status AcceptPlan(const std::vector<int>& kv_source, const std::vector<KvType>& kv_types,
                          int first_changed_layer);
  const std::vector<KvType>& accepted_types() const { return forward_->accepted_types(); }
  void set_kv_block_tokens(int block_tokens) { forward_->set_kv_block_tokens(block_tokens); }

  CandidateMetric metric() const { return metric_; }
  const CalibrationLoss& unshared() const { return unshared_; }
  const CalibrationLoss& last() const { return last_; }  // of the last Score
  // Of the plan AcceptPlan last kept (the unshared model's until then).
  const CalibrationLoss& accepted_loss() const { return accepted_loss_; }
  const std::vector<int>& accepted() const { return forward_->accepted(); }
  // With Create's keep_best, of the candidates Score ran since the last accept the
  // best-scoring one is kept aside (IncrementalForward::KeepLastRun, a third bank: half as much
  // memory again), so a best-of-K step accepts it without running it again.
  // Forwards run so far for an accept (a candidate neither last run nor kept).
  int accept_reruns() const { return accept_reruns_; }

 private:
  LossEvaluator(Transformer& transformer, const CalibrationSet& calibration, CandidateMetric metric,
                bool keep_best);
  absl::Status Init(ForwardObserver* identity_observer);
  // Adds the NLL of rows [row0, row0 + rows) (final-normed, on the backend at h) to nll_sum_
  // and to their samples' entries of sample_nll_.
  void AddNll(const float* h, size_t row0, int rows);
  // Clears nll_sum_ and sample_nll_ for a run.
  void ResetNll();
  // Both measures of the forward's last run (over the samples it covered), whose NLL summed
  // over targets is nll_sum_.
  CalibrationLoss Compare() const;

  Transformer& transformer_;
  const CalibrationSet& calibration_;
  const CandidateMetric metric_;
  const bool keep_best_;
  int dim_ = 0, vocab_ = 0, logit_rows_ = 0;
  std::unique_ptr<IncrementalForward> forward_;
  std::unique_ptr<Buffer> logits_;  // [logit_rows][vocab]
  // Per logit row: its target (-1: none) and NLL.
  std::vector<int32_t> targets_;
  std::vector<double> row_nll_;
  double nll_sum_ = 0.0;  // the last run's NLL summed over targets
  // Per sample, its targets' NLL summed: of the last run, and of the unshared model.
  std::vector<double> sample_nll_, unshared_sample_nll_;
  CalibrationLoss unshared_, last_, accepted_loss_;
  // The score of the run kept since the last accept (none: nothing kept).
  std::optional<double> kept_score_;
  int accept_reruns_ = 0;
};

}  // namespace kvshare
