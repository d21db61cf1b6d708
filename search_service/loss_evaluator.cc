#include "search_service/loss_evaluator.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_format.h"
#include "search_service/cosine_evaluator.h"

namespace kvshare {
namespace {

constexpr int kMaxLogitRows = 128;  // [128][vocab] floats: 25 MB for SmolLM2's 49152

}  // namespace

LossEvaluator::LossEvaluator(Transformer& transformer, const CalibrationSet& calibration,
                             CandidateMetric metric, bool keep_best)
    : transformer_(transformer),
      calibration_(calibration),
      metric_(metric),
      keep_best_(keep_best) {}

LossEvaluator::~LossEvaluator() = default;

absl::StatusOr<std::unique_ptr<LossEvaluator>> LossEvaluator::Create(
    Transformer& transformer, const CalibrationSet& calibration, CandidateMetric metric,
    ForwardObserver* identity_observer, bool keep_best) {
  std::unique_ptr<LossEvaluator> e(new LossEvaluator(transformer, calibration, metric, keep_best));
  absl::Status s = e->Init(identity_observer);
  if (!s.ok()) return s;
  return e;
}

absl::Status LossEvaluator::Init(ForwardObserver* identity_observer) {
  const ModelConfig& c = transformer_.config();
  const int N = calibration_.samples, T = calibration_.tokens;
  if (N < 1 || T < 2 || calibration_.ids.size() != size_t(N) * T) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "loss evaluator: calibration set of %d samples x %d tokens holds %d ids (need >= 1 "
        "sample of >= 2 tokens: the NLL needs a target)",
        N, T, calibration_.ids.size()));
  }
  dim_ = c.dim;
  vocab_ = c.vocab_size;
  logit_rows_ = std::min(kMaxLogitRows, transformer_.max_rows());
  auto logits = transformer_.backend().Allocate(size_t(logit_rows_) * vocab_ * sizeof(float));
  if (!logits.ok()) return logits.status();
  logits_ = std::move(*logits);
  targets_.resize(logit_rows_);
  row_nll_.resize(logit_rows_);

  // The unshared model's final states and NLL are the reference.
  ResetNll();
  auto forward = IncrementalForward::Create(
      transformer_, calibration_, "loss evaluator", identity_observer,
      [this](const float* h, size_t row0, int rows) { AddNll(h, row0, rows); }, keep_best_);
  if (!forward.ok()) return forward.status();
  forward_ = std::move(*forward);
  unshared_sample_nll_ = sample_nll_;
  unshared_ = Compare();
  last_ = accepted_loss_ = unshared_;
  return absl::OkStatus();
}

void LossEvaluator::ResetNll() {
  nll_sum_ = 0.0;
  sample_nll_.assign(calibration_.samples, 0.0);
}

void LossEvaluator::AddNll(const float* h, size_t row0, int rows) {
  const int T = calibration_.tokens;
  Backend& backend = transformer_.backend();
  for (int r0 = 0; r0 < rows; r0 += logit_rows_) {
    const int n = std::min(logit_rows_, rows - r0);
    transformer_.Logits(h + size_t(r0) * dim_, n, logits_->f32());
    for (int r = 0; r < n; ++r) {
      const size_t row = row0 + r0 + r;  // global row: sample row / T, position row % T
      // The last position predicts nothing in the sample.
      targets_[r] = int(row % T) == T - 1 ? -1 : calibration_.ids[row + 1];
    }
    backend.TargetNll(logits_->f32(), n, vocab_, targets_.data(), row_nll_.data());
    for (int r = 0; r < n; ++r) {
      if (targets_[r] < 0) continue;
      const size_t row = row0 + r0 + r;
      nll_sum_ += row_nll_[r];
      sample_nll_[row / T] += row_nll_[r];
    }
  }
}

CalibrationLoss LossEvaluator::Compare() const {
  const int N = forward_->last_run_samples(), T = calibration_.tokens;
  CalibrationLoss loss;
  loss.cosine =
      MeanSampleCosine(forward_->reference_final(), forward_->final_states(), N, size_t(T) * dim_);
  loss.nll = nll_sum_ / (double(N) * (T - 1));
  loss.samples = N;
  double unshared = 0.0;
  for (int s = 0; s < N; ++s) unshared += unshared_sample_nll_[s];
  loss.unshared_nll = unshared / (double(N) * (T - 1));
  return loss;
}

absl::StatusOr<double> LossEvaluator::Score(const std::vector<int>& kv_source,
                                            int first_changed_layer) {
  ResetNll();
  absl::Status s =
      forward_->Run(kv_source, first_changed_layer,
                    [this](const float* h, size_t row0, int rows) { AddNll(h, row0, rows); });
  if (!s.ok()) return s;
  last_ = Compare();
  const double score =
      metric_ == CandidateMetric::kCosine ? last_.cosine : -(last_.nll - unshared_.nll);
  // A rule that accepts the best of several candidates accepts this one unless a later one
  // scores higher.
  if (keep_best_ && (!kept_score_.has_value() || score > *kept_score_)) {
    s = forward_->KeepLastRun();
    if (!s.ok()) return s;
    kept_score_ = score;
  }
  return score;
}

absl::Status LossEvaluator::Accept(const std::vector<int>& kv_source, int first_changed_layer) {
  if (!forward_->IsLastRun(kv_source, first_changed_layer) &&
      !forward_->IsKept(kv_source, first_changed_layer)) {
    // Neither the candidate just scored nor the kept one: run it again.
    ++accept_reruns_;
    auto score = Score(kv_source, first_changed_layer);
    if (!score.ok()) return score.status();
  }
  kept_score_.reset();
  return forward_->Accept(kv_source, first_changed_layer);
}

absl::StatusOr<CalibrationLoss> LossEvaluator::ScorePlan(const std::vector<int>& kv_source,
                                                         const std::vector<KvType>& kv_types,
                                                         int first_changed_layer,
                                                         const EarlyReject* reject) {
  ResetNll();
  IncrementalForward::StopFn stop;
  if (reject != nullptr) {
    stop = [this, reject](int samples_run) {
      const double targets = calibration_.tokens - 1;
      std::vector<double> increases(samples_run);
      for (int s = 0; s < samples_run; ++s) {
        increases[s] = (sample_nll_[s] - unshared_sample_nll_[s]) / targets;
      }
      return OverBudgetBeyondDoubt(increases, size_t(calibration_.samples), *reject);
    };
  }
  absl::Status s = forward_->RunPlan(
      kv_source, kv_types, first_changed_layer,
      [this](const float* h, size_t row0, int rows) { AddNll(h, row0, rows); }, stop);
  if (!s.ok()) return s;
  last_ = Compare();
  return last_;
}

absl::Status LossEvaluator::AcceptPlan(const std::vector<int>& kv_source,
                                       const std::vector<KvType>& kv_types,
                                       int first_changed_layer) {
  kept_score_.reset();
  absl::Status s = forward_->AcceptPlan(kv_source, kv_types, first_changed_layer);
  if (absl::IsFailedPrecondition(s)) {
    ++accept_reruns_;
    auto scored = ScorePlan(kv_source, kv_types, first_changed_layer);
    if (!scored.ok()) return scored.status();
    s = forward_->AcceptPlan(kv_source, kv_types, first_changed_layer);
  }
  if (s.ok()) accepted_loss_ = last_;  // the run just accepted is the one last scored
  return s;
}

absl::StatusOr<CalibrationLoss> LossEvaluator::Measure(const std::vector<int>& kv_source) {
  const int L = forward_->n_layers();
  if (int(kv_source.size()) != L) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy has %d layers, the model %d", kv_source.size(), L));
  }
  const std::vector<int>& accepted = forward_->accepted();
  int first = 0;
  while (first < L && kv_source[first] == accepted[first]) ++first;
  if (first == L) {
    // The accepted strategy itself: score it from its last layer (the same computation).
    first = L - 1;
  }
  auto score = Score(kv_source, first);
  if (!score.ok()) return score.status();
  return last_;
}

}  // namespace kvshare
