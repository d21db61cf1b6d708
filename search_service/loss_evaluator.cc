#include "search_service/loss_evaluator.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

constexpr int kMaxLogitRows = 128;  // [128][vocab] floats: 25 MB for SmolLM2's 49152

// -log softmax(row)[target], in double over a float row.
double Nll(const float* row, int vocab, int32_t target) {
  float m = row[0];
  for (int v = 1; v < vocab; ++v) m = std::max(m, row[v]);
  // exp in float (the row is float already); the sum in double.
  double s = 0.0;
  for (int v = 0; v < vocab; ++v) s += std::exp(row[v] - m);
  return double(m) + std::log(s) - double(row[target]);
}

}  // namespace

// Copies each layer's output rows of a batch into the candidate's host states (the residual
// entering the next layer), and passes every event on to an optional observer.
class LossEvaluator::LayerOutputCapture : public ForwardObserver {
 public:
  LayerOutputCapture(LossEvaluator& e, size_t row0, ForwardObserver* extra)
      : e_(e), row0_(row0), extra_(extra) {}
  void OnKv(int layer, int input, const float* k, const float* v, int n) override {
    if (extra_ != nullptr) extra_->OnKv(layer, input, k, v, n);
  }
  void OnLayerOutput(int layer, const float* x, int rows) override {
    if (layer + 1 < e_.n_layers_) {
      e_.transformer_.backend().CopyToHost(
          x, size_t(rows) * e_.dim_ * sizeof(float),
          e_.candidate_hidden_[layer + 1].data() + row0_ * e_.dim_);
    }
    if (extra_ != nullptr) extra_->OnLayerOutput(layer, x, rows);
  }

 private:
  LossEvaluator& e_;
  const size_t row0_;
  ForwardObserver* const extra_;
};

LossEvaluator::LossEvaluator(Transformer& transformer, const CalibrationSet& calibration,
                             CandidateMetric metric)
    : transformer_(transformer), calibration_(calibration), metric_(metric) {}

LossEvaluator::~LossEvaluator() = default;

absl::StatusOr<std::unique_ptr<LossEvaluator>> LossEvaluator::Create(
    Transformer& transformer, const CalibrationSet& calibration, CandidateMetric metric,
    ForwardObserver* identity_observer) {
  std::unique_ptr<LossEvaluator> e(new LossEvaluator(transformer, calibration, metric));
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
  if (T > c.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "calibration tokens %d exceed the model's context of %d", T, c.max_seq_len));
  }
  if (T > transformer_.max_rows()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "calibration tokens %d exceed the transformer's max_rows %d", T, transformer_.max_rows()));
  }
  for (size_t k = 0; k < calibration_.ids.size(); ++k) {
    const int32_t id = calibration_.ids[k];
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "calibration sample %d position %d: token id %d is outside the vocabulary [0, %d)",
          int(k / T), int(k % T), id, c.vocab_size));
    }
  }
  dim_ = c.dim;
  n_layers_ = c.n_layers;
  vocab_ = c.vocab_size;
  batch_samples_ = std::min(N, transformer_.max_rows() / T);
  logit_rows_ = std::min(kMaxLogitRows, transformer_.max_rows());

  auto kv = DenseKvLayout::Create(transformer_.backend(), c, N, T);
  if (!kv.ok()) return kv.status();
  kv_ = std::move(*kv);
  auto x = transformer_.backend().Allocate(size_t(batch_samples_) * T * dim_ * sizeof(float));
  if (!x.ok()) return x.status();
  x_ = std::move(*x);
  auto logits = transformer_.backend().Allocate(size_t(logit_rows_) * vocab_ * sizeof(float));
  if (!logits.ok()) return logits.status();
  logits_ = std::move(*logits);
  host_logits_.resize(size_t(logit_rows_) * vocab_);
  positions_.resize(size_t(batch_samples_) * T);
  for (size_t r = 0; r < positions_.size(); ++r) positions_[r] = static_cast<int32_t>(r % T);
  seqs_.resize(batch_samples_);
  for (int b = 0; b < batch_samples_; ++b) seqs_[b] = {b * T, T, 0};

  const size_t floats = size_t(N) * T * dim_;
  accepted_hidden_.assign(n_layers_, std::vector<float>(floats));
  candidate_hidden_.assign(n_layers_, std::vector<float>(floats));
  final_.resize(floats);

  // The unshared model is a candidate changed from layer 0; its final states and NLL are the
  // reference.
  scored_.resize(n_layers_);
  for (int l = 0; l < n_layers_; ++l) scored_[l] = l;
  kv_->SetCandidate(scored_, 0);
  absl::Status s = RunCandidate(0, identity_observer);
  if (!s.ok()) return s;
  reference_final_ = final_;
  unshared_ = Compare();
  last_ = unshared_;
  scored_first_ = 0;
  return Accept(scored_, 0);
}

void LossEvaluator::AddNll(const float* h, size_t row0, int rows) {
  const int T = calibration_.tokens;
  Backend& backend = transformer_.backend();
  for (int r0 = 0; r0 < rows; r0 += logit_rows_) {
    const int n = std::min(logit_rows_, rows - r0);
    transformer_.Logits(h + size_t(r0) * dim_, n, logits_->f32());
    backend.CopyToHost(logits_->f32(), size_t(n) * vocab_ * sizeof(float), host_logits_.data());
    for (int r = 0; r < n; ++r) {
      const size_t row = row0 + r0 + r;     // global row: sample row / T, position row % T
      if (int(row % T) == T - 1) continue;  // the last position predicts nothing in the sample
      nll_sum_ += Nll(host_logits_.data() + size_t(r) * vocab_, vocab_, calibration_.ids[row + 1]);
    }
  }
}

absl::Status LossEvaluator::RunCandidate(int first, ForwardObserver* extra_observer) {
  const int N = calibration_.samples, T = calibration_.tokens;
  float* x = x_->f32();
  Backend& backend = transformer_.backend();
  nll_sum_ = 0.0;
  for (int s0 = 0; s0 < N; s0 += batch_samples_) {
    const int nb = std::min(batch_samples_, N - s0);
    const int rows = nb * T;
    const size_t row0 = size_t(s0) * T;
    const size_t bytes = size_t(rows) * dim_ * sizeof(float);
    kv_->set_first_input(s0);
    if (first == 0) {
      transformer_.Embed(calibration_.sample(s0), rows, x);
      backend.CopyToHost(x, bytes, candidate_hidden_[0].data() + row0 * dim_);
    } else {
      backend.CopyFromHost(accepted_hidden_[first].data() + row0 * dim_, bytes, x);
    }
    LayerOutputCapture capture(*this, row0, extra_observer);
    transformer_.RunLayers(first, n_layers_, absl::MakeConstSpan(seqs_.data(), nb),
                           positions_.data(), rows, *kv_, x, &capture);
    transformer_.FinalNorm(x, rows, x);
    backend.CopyToHost(x, bytes, final_.data() + row0 * dim_);
    AddNll(x, row0, rows);
  }
  return absl::OkStatus();
}

CalibrationLoss LossEvaluator::Compare() const {
  const int N = calibration_.samples, T = calibration_.tokens;
  const size_t per_sample = size_t(T) * dim_;
  CalibrationLoss loss;
  double total = 0;
  for (int n = 0; n < N; ++n) {
    const float* a = reference_final_.data() + n * per_sample;
    const float* b = final_.data() + n * per_sample;
    double ab = 0, aa = 0, bb = 0;
    for (size_t k = 0; k < per_sample; ++k) {
      ab += double(a[k]) * b[k];
      aa += double(a[k]) * a[k];
      bb += double(b[k]) * b[k];
    }
    // A zero vector has no direction; call it orthogonal rather than NaN (as CosineEvaluator).
    total += (aa > 0 && bb > 0) ? ab / (std::sqrt(aa) * std::sqrt(bb)) : 0.0;
  }
  loss.cosine = total / N;
  loss.nll = nll_sum_ / (double(N) * (T - 1));
  return loss;
}

absl::StatusOr<double> LossEvaluator::Score(const std::vector<int>& kv_source,
                                            int first_changed_layer) {
  absl::Status s = CheckEvaluatorCandidate(accepted_, kv_source, first_changed_layer);
  if (!s.ok()) return s;
  kv_->SetCandidate(kv_source, first_changed_layer);
  scored_first_ = -1;  // candidate_* are being overwritten
  s = RunCandidate(first_changed_layer, nullptr);
  if (!s.ok()) return s;
  scored_ = kv_source;
  scored_first_ = first_changed_layer;
  last_ = Compare();
  switch (metric_) {
    case CandidateMetric::kCosine:
      return last_.cosine;
    case CandidateMetric::kNllIncrease:
      return -(last_.nll - unshared_.nll);
  }
  return absl::InternalError("unknown candidate metric");
}

absl::Status LossEvaluator::Accept(const std::vector<int>& kv_source, int first_changed_layer) {
  if (scored_first_ < 0 || kv_source != scored_ || first_changed_layer != scored_first_) {
    // Not the candidate just scored (a best-of-K step accepts an earlier one): run it again.
    auto score = Score(kv_source, first_changed_layer);
    if (!score.ok()) return score.status();
  }
  kv_->AcceptCandidate();
  // The residual entering layer first_changed is the accepted one already; the later ones are
  // the candidate's.
  const int from = first_changed_layer == 0 ? 0 : first_changed_layer + 1;
  for (int l = from; l < n_layers_; ++l) std::swap(accepted_hidden_[l], candidate_hidden_[l]);
  accepted_ = kv_source;
  scored_first_ = -1;
  return absl::OkStatus();
}

absl::StatusOr<CalibrationLoss> LossEvaluator::Measure(const std::vector<int>& kv_source) {
  if (int(kv_source.size()) != n_layers_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy has %d layers, the model %d", kv_source.size(), n_layers_));
  }
  int first = 0;
  while (first < n_layers_ && kv_source[first] == accepted_[first]) ++first;
  if (first == n_layers_) {
    // The accepted strategy itself: score it from its last layer (the same computation).
    first = n_layers_ - 1;
  }
  auto score = Score(kv_source, first);
  if (!score.ok()) return score.status();
  return last_;
}

}  // namespace kvshare
