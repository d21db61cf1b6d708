#include "search_service/incremental_forward.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/engine/query_weights.h"
#include "search_service/greedy_search.h"
#include "search_service/kv_round_trip.h"

namespace kvshare {

// Copies each layer's output rows of a batch into the candidate's host states (the residual
// entering the next layer), and passes every event on to an optional observer.
class IncrementalForward::LayerOutputCapture : public ForwardObserver {
 public:
  LayerOutputCapture(IncrementalForward& f, size_t row0, ForwardObserver* extra)
      : f_(f), row0_(row0), extra_(extra) {}
  void OnKv(int layer, int input, const float* k, const float* v, int n) override {
    const std::vector<KvType>* types = f_.running_types_;
    if (types != nullptr && !types->empty() && (*types)[layer] != KvType::kF32) {
      f_.RoundTripBlock(layer, input, (*types)[layer], n);
    }
    if (extra_ != nullptr) extra_->OnKv(layer, input, k, v, n);
  }
  void OnLayerOutput(int layer, const float* x, int rows) override {
    if (layer + 1 < f_.n_layers_) {
      f_.transformer_.backend().CopyToHost(
          x, size_t(rows) * f_.dim_ * sizeof(float),
          f_.candidate_hidden_[layer + 1].data() + row0_ * f_.dim_);
    }
    if (extra_ != nullptr) extra_->OnLayerOutput(layer, x, rows);
  }

 private:
  IncrementalForward& f_;
  const size_t row0_;
  ForwardObserver* const extra_;
};

IncrementalForward::IncrementalForward(Transformer& transformer, const CalibrationSet& calibration)
    : transformer_(transformer), calibration_(calibration) {}

IncrementalForward::~IncrementalForward() = default;

absl::StatusOr<std::unique_ptr<IncrementalForward>> IncrementalForward::Create(
    Transformer& transformer, const CalibrationSet& calibration, const std::string& user,
    ForwardObserver* identity_observer, const FinalBatchFn& on_final, bool keep_bank) {
  std::unique_ptr<IncrementalForward> f(new IncrementalForward(transformer, calibration));
  absl::Status s = f->Init(user, identity_observer, on_final, keep_bank);
  if (!s.ok()) return s;
  return f;
}

absl::Status IncrementalForward::Init(const std::string& user, ForwardObserver* identity_observer,
                                      const FinalBatchFn& on_final, bool keep_bank) {
  const ModelConfig& c = transformer_.config();
  const int N = calibration_.samples, T = calibration_.tokens;
  if (N < 1 || T < 1 || calibration_.ids.size() != size_t(N) * T) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: calibration set of %d samples x %d tokens holds %d ids", user, N, T,
                        calibration_.ids.size()));
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
  batch_samples_ = std::min(N, transformer_.max_rows() / T);

  auto kv = DenseKvLayout::Create(transformer_.backend(), c, N, T, keep_bank);
  if (!kv.ok()) return kv.status();
  kv_ = std::move(*kv);
  auto x = transformer_.backend().Allocate(size_t(batch_samples_) * T * dim_ * sizeof(float));
  if (!x.ok()) return x.status();
  x_ = std::move(*x);
  positions_.resize(size_t(batch_samples_) * T);
  for (size_t r = 0; r < positions_.size(); ++r) positions_[r] = static_cast<int32_t>(r % T);
  seqs_.resize(batch_samples_);
  for (int b = 0; b < batch_samples_; ++b) seqs_[b] = {b * T, T, 0};

  const size_t floats = size_t(N) * T * dim_;
  accepted_hidden_.assign(n_layers_, std::vector<float>(floats));
  candidate_hidden_.assign(n_layers_, std::vector<float>(floats));
  if (keep_bank) kept_hidden_.assign(n_layers_, std::vector<float>(floats));
  final_.resize(floats);

  // The unshared model: every layer runs and owns, so the whole forward is a "candidate"
  // changed from layer 0; its final states are the reference every metric compares with.
  run_.resize(n_layers_);
  for (int l = 0; l < n_layers_; ++l) run_[l] = l;
  kv_->SetCandidate(run_, 0);
  run_samples_ = RunFrom(0, identity_observer, on_final);
  reference_final_ = final_;
  run_first_ = 0;
  return Accept(run_, 0);
}

void IncrementalForward::RoundTripBlock(int layer, int input, KvType type, int n) {
  // The block this owning layer just wrote (its own, in the candidate bank): K [T][C], then
  // V [T][C], T = calibration tokens; positions 0 .. n-1 hold the sample.
  const KvGeometry& dense = kv_->geometry();
  const size_t c = size_t(dense.kv_dim()), t = size_t(dense.block_tokens);
  float* block = kv_->pool() + size_t(kv_->Table(input, layer)[0]) * dense.block_floats();
  Backend& backend = transformer_.backend();
  kv_host_.resize(2 * t * c);
  backend.CopyToHost(block, kv_host_.size() * sizeof(float), kv_host_.data());
  KvGeometry g = dense;
  g.block_tokens = kv_block_tokens_;
  g.type = type;
  if (type == KvType::kInt4A) g.k_weights = query_weights_->layers[layer].data();
  KvRoundTrip(g).Apply(n, kv_host_.data(), kv_host_.data() + t * c);
  backend.CopyFromHost(kv_host_.data(), kv_host_.size() * sizeof(float), block);
}

int IncrementalForward::RunFrom(int first, ForwardObserver* extra_observer,
                                const FinalBatchFn& on_final, const StopFn& stop) {
  const int N = calibration_.samples, T = calibration_.tokens;
  float* x = x_->f32();
  Backend& backend = transformer_.backend();
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
    if (on_final) on_final(x, row0, rows);
    if (s0 + nb < N && stop && stop(s0 + nb)) return s0 + nb;
  }
  return N;
}

absl::Status IncrementalForward::Run(const std::vector<int>& kv_source, int first_changed_layer,
                                     const FinalBatchFn& on_final) {
  absl::Status s = CheckEvaluatorCandidate(accepted_, kv_source, first_changed_layer);
  if (!s.ok()) return s;
  return RunPlan(kv_source, accepted_types_, first_changed_layer, on_final);
}

absl::Status IncrementalForward::CheckPlan(const std::vector<int>& kv_source,
                                           const std::vector<KvType>& kv_types,
                                           int first_changed_layer) const {
  if (n_layers_ > 1) {
    absl::Status s =
        CheckEvaluatorCandidate(accepted_, kv_source, std::max(first_changed_layer, 1));
    if (!s.ok()) return s;
  }
  if (first_changed_layer < 0 || first_changed_layer >= n_layers_) {
    return absl::InvalidArgumentError(absl::StrFormat("first changed layer %d must be in [0, %d)",
                                                      first_changed_layer, n_layers_));
  }
  if (!kv_types.empty() && int(kv_types.size()) != n_layers_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KV plan has %d layer types, the model %d layers", kv_types.size(), n_layers_));
  }
  auto type_of = [](const std::vector<KvType>& types, int l) {
    return types.empty() ? KvType::kF32 : types[l];
  };
  for (int l = 0; l < n_layers_; ++l) {
    if (kv_source[l] != l) continue;
    const KvType t = type_of(kv_types, l);
    KvGeometry g = kv_->geometry();
    g.block_tokens = kv_block_tokens_;
    g.type = t;
    absl::Status valid = ValidateKvGeometry(g);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("KV plan layer %d: %s", l, valid.message()));
    }
    if (l < first_changed_layer && t != type_of(accepted_types_, l)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KV plan layer %d is %s, the accepted plan's %s, but the first changed layer is said "
          "to be %d",
          l, KvTypeName(t), KvTypeName(type_of(accepted_types_, l)), first_changed_layer));
    }
  }
  return absl::OkStatus();
}

absl::Status IncrementalForward::RunPlan(const std::vector<int>& kv_source,
                                         const std::vector<KvType>& kv_types,
                                         int first_changed_layer, const FinalBatchFn& on_final,
                                         const StopFn& stop) {
  absl::Status s = CheckPlan(kv_source, kv_types, first_changed_layer);
  if (!s.ok()) return s;
  if (query_weights_ == nullptr &&
      std::find(kv_types.begin(), kv_types.end(), KvType::kInt4A) != kv_types.end()) {
    auto weights = QueryWeightsOf(transformer_.model());  // what a serving engine measures
    if (!weights.ok()) return weights.status();
    query_weights_ = std::move(*weights);
  }
  kv_->SetCandidate(kv_source, first_changed_layer);
  run_first_ = -1;  // candidate_* are being overwritten
  running_types_ = &kv_types;
  run_samples_ = RunFrom(first_changed_layer, nullptr, on_final, stop);
  running_types_ = nullptr;
  run_ = kv_source;
  run_types_ = kv_types;
  // A run that stopped early left the later samples' states of another candidate.
  run_first_ = run_samples_ == calibration_.samples ? first_changed_layer : -1;
  return absl::OkStatus();
}

bool IncrementalForward::RunIs(const std::vector<int>& kv_source,
                               const std::vector<KvType>& kv_types, int first_changed_layer) const {
  return run_first_ >= 0 && first_changed_layer == run_first_ && kv_source == run_ &&
         kv_types == run_types_;
}

bool IncrementalForward::KeptIs(const std::vector<int>& kv_source,
                                const std::vector<KvType>& kv_types,
                                int first_changed_layer) const {
  return kept_first_ >= 0 && first_changed_layer == kept_first_ && kv_source == kept_ &&
         kv_types == kept_types_;
}

bool IncrementalForward::IsLastRun(const std::vector<int>& kv_source,
                                   int first_changed_layer) const {
  return RunIs(kv_source, accepted_types_, first_changed_layer);
}

absl::Status IncrementalForward::Accept(const std::vector<int>& kv_source,
                                        int first_changed_layer) {
  return AcceptPlan(kv_source, accepted_types_, first_changed_layer);
}

absl::Status IncrementalForward::KeepLastRun() {
  if (!kv_->has_kept_bank()) {
    return absl::FailedPreconditionError("keeping a run needs the kept bank (Create's keep_bank)");
  }
  if (run_first_ < 0) {
    return absl::FailedPreconditionError("no complete run since the last accept to keep");
  }
  for (int l = FirstWrittenResidual(run_first_); l < n_layers_; ++l) {
    std::swap(candidate_hidden_[l], kept_hidden_[l]);
  }
  kv_->SwapCandidateAndKept(run_first_);
  kept_ = run_;
  kept_types_ = run_types_;
  kept_first_ = run_first_;
  run_first_ = -1;
  return absl::OkStatus();
}

bool IncrementalForward::IsKept(const std::vector<int>& kv_source, int first_changed_layer) const {
  return KeptIs(kv_source, accepted_types_, first_changed_layer);
}

absl::Status IncrementalForward::AcceptPlan(const std::vector<int>& kv_source,
                                            const std::vector<KvType>& kv_types,
                                            int first_changed_layer) {
  const bool last_run = RunIs(kv_source, kv_types, first_changed_layer);
  if (!last_run && KeptIs(kv_source, kv_types, first_changed_layer)) {
    // The kept run becomes the candidate again (the last run's states go to the kept bank,
    // which the accept below forgets).
    for (int l = FirstWrittenResidual(kept_first_); l < n_layers_; ++l) {
      std::swap(candidate_hidden_[l], kept_hidden_[l]);
    }
    kv_->SetCandidate(kept_, kept_first_);
    kv_->SwapCandidateAndKept(kept_first_);
    run_ = kept_;
    run_types_ = kept_types_;
    run_first_ = kept_first_;
  } else if (!last_run) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "accepting a candidate (first changed layer %d) that is neither the one last run nor the "
        "kept one",
        first_changed_layer));
  }
  kv_->AcceptCandidate();
  // The residual entering layer first_changed is the accepted one already; the later ones are
  // the candidate's.
  for (int l = FirstWrittenResidual(first_changed_layer); l < n_layers_; ++l) {
    std::swap(accepted_hidden_[l], candidate_hidden_[l]);
  }
  accepted_ = kv_source;
  accepted_types_ = kv_types;
  run_first_ = -1;
  kept_first_ = -1;  // run against the strategy accepted until now
  return absl::OkStatus();
}

}  // namespace kvshare
