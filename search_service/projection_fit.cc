#include "search_service/projection_fit.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/engine/sampler.h"
#include "search_service/ridge_fit.h"

namespace kvshare {
namespace {

// K/V of the fit set: one block of `tokens` positions per (sample, owning layer), plus one
// scratch block per sample where the layer being fitted stores its own K/V for the target
// pass (own_layer). Inputs are samples first_input .. first_input + n - 1.
class FitKvLayout : public KvLayout {
 public:
  static absl::StatusOr<std::unique_ptr<FitKvLayout>> Create(Backend& backend, const ModelConfig& c,
                                                             const SharingStrategy& strategy,
                                                             int samples, int tokens) {
    std::unique_ptr<FitKvLayout> f(new FitKvLayout(strategy));
    f->geometry_.block_tokens = tokens;
    f->geometry_.n_kv_heads = c.n_kv_heads;
    f->geometry_.head_dim = c.head_dim;
    f->slot_.assign(c.n_layers, -1);
    for (int l = 0; l < c.n_layers; ++l) {
      if (strategy.owns(l)) f->slot_[l] = f->slots_++;
    }
    f->scratch_ = f->slots_++;
    const size_t blocks = size_t(samples) * f->slots_;
    auto pool = backend.Allocate(blocks * f->geometry_.block_floats() * sizeof(float));
    if (!pool.ok()) return pool.status();
    f->pool_ = std::move(*pool);
    f->ids_.resize(blocks);
    for (size_t b = 0; b < blocks; ++b) f->ids_[b] = static_cast<int32_t>(b);
    f->projection_.assign(c.n_layers, nullptr);
    f->substitute_.assign(c.n_layers, Substitute{});
    return f;
  }

  const KvGeometry& geometry() const override { return geometry_; }
  float* pool() override { return pool_->f32(); }
  bool Owns(int /*input*/, int layer) const override {
    return layer == own_layer_ || strategy_.owns(layer);
  }
  absl::Span<const int32_t> Table(int input, int layer) const override {
    const int slot = layer == own_layer_ ? scratch_ : slot_[strategy_.source(layer)];
    return absl::Span<const int32_t>(&ids_[size_t(first_input_ + input) * slots_ + slot], 1);
  }
  bool DropsAttention(int /*input*/, int layer) const override {
    return layer != own_layer_ && strategy_.drops(layer);
  }
  const PreparedWeight* OutputProjection(int /*input*/, int layer) const override {
    return layer == own_layer_ ? nullptr : projection_[layer];
  }
  Substitute AttentionSubstitute(int /*input*/, int layer) const override {
    return layer == own_layer_ ? Substitute{} : substitute_[layer];
  }

  void set_first_input(int sample) { first_input_ = sample; }
  // -1: the strategy as it is; l: layer l attends over its own, freshly computed K/V.
  void set_own_layer(int layer) { own_layer_ = layer; }
  void set_projection(int layer, const PreparedWeight* w) { projection_[layer] = w; }
  void set_substitute(int layer, Substitute s) { substitute_[layer] = s; }

 private:
  explicit FitKvLayout(const SharingStrategy& strategy) : strategy_(strategy) {}
  const SharingStrategy& strategy_;
  KvGeometry geometry_;
  std::vector<int> slot_;  // per layer: its slot when it owns, else -1
  int slots_ = 0, scratch_ = 0;
  std::unique_ptr<Buffer> pool_;
  std::vector<int32_t> ids_;  // [sample][slot] -> block
  std::vector<const PreparedWeight*> projection_;
  std::vector<Substitute> substitute_;
  int first_input_ = 0, own_layer_ = -1;
};

// Copies a layer's attention output (before W_o) of every row to host memory.
class AttentionCapture : public ForwardObserver {
 public:
  AttentionCapture(Backend& backend, int layer, size_t row_floats, float* dst)
      : backend_(backend), layer_(layer), row_floats_(row_floats), dst_(dst) {}
  void OnAttentionOutput(int layer, const float* att, int rows) override {
    if (layer == layer_) backend_.CopyToHost(att, size_t(rows) * row_floats_ * 4, dst_);
  }

 private:
  Backend& backend_;
  const int layer_;
  const size_t row_floats_;
  float* const dst_;
};

// The affine fit's sums of the layers in `layers`: each attention input h ([rows][dim]) with a
// trailing 1 per row (the intercept) against what the attention block adds ([rows][dim]),
// copied to host memory and added to that layer's RidgeAccumulator as the forward runs.
class SubstituteSums : public ForwardObserver {
 public:
  SubstituteSums(Backend& backend, int n_layers, int dim, int max_rows,
                 const std::vector<int>& layers)
      : backend_(backend),
        dim_(dim),
        index_(n_layers, -1),
        h_(size_t(max_rows) * dim),
        h1_(size_t(max_rows) * (dim + 1)),
        d_(size_t(max_rows) * dim) {
    for (int l : layers) {
      index_[l] = static_cast<int>(sums_.size());
      sums_.emplace_back(dim + 1, dim);
    }
  }
  void OnAttentionInput(int layer, const float* h, int rows) override {
    if (index_[layer] < 0) return;
    backend_.CopyToHost(h, size_t(rows) * dim_ * 4, h_.data());
    for (int r = 0; r < rows; ++r) {
      std::copy_n(&h_[size_t(r) * dim_], dim_, &h1_[size_t(r) * (dim_ + 1)]);
      h1_[size_t(r) * (dim_ + 1) + dim_] = 1.0f;
    }
  }
  void OnAttentionContribution(int layer, const float* delta, int rows) override {
    if (index_[layer] < 0) return;
    backend_.CopyToHost(delta, size_t(rows) * dim_ * 4, d_.data());
    sums_[index_[layer]].Add(h1_.data(), d_.data(), rows);
  }
  const RidgeAccumulator& sums(int layer) const { return sums_[index_[layer]]; }

 private:
  Backend& backend_;
  const int dim_;
  std::vector<int> index_;  // per layer: its entry in sums_, or -1
  std::vector<float> h_, h1_, d_;
  std::vector<RidgeAccumulator> sums_;
};

// Layer l's substitute from its sums, as a one-substitute OutputProjections of `type`.
absl::StatusOr<std::shared_ptr<const OutputProjections>> SolveSubstitute(
    const RidgeAccumulator& sums, int l, double ridge, DType type, int dim, int q) {
  auto a = SolveRidgeAffine(sums, ridge);
  if (!a.ok()) {
    return absl::Status(a.status().code(),
                        absl::StrFormat("layer %d: %s", l, a.status().message()));
  }
  return OutputProjections::FromF32(type, dim, q, {}, {},
                                    {{l, std::move(a->matrix), std::move(a->bias)}});
}

absl::Status CheckSet(const ModelConfig& c, const CalibrationSet& set, int max_rows,
                      const char* what) {
  if (set.samples < 1 || set.tokens < 2 || set.ids.size() != size_t(set.samples) * set.tokens) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s set of %d samples x %d tokens holds %d ids (need >= 1 sample of >= "
                        "2 tokens)",
                        what, set.samples, set.tokens, set.ids.size()));
  }
  if (set.tokens > c.max_seq_len || set.tokens > max_rows) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s set tokens %d exceed the model's context %d or max_rows %d", what,
                        set.tokens, c.max_seq_len, max_rows));
  }
  for (int32_t id : set.ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s set: token id %d is outside the vocabulary [0, %d)", what, id, c.vocab_size));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<double> DefaultRidges() { return {0.003, 0.03, 0.3}; }

absl::StatusOr<std::shared_ptr<const OutputProjections>> FitOutputProjections(
    Transformer& transformer, const CalibrationSet& fit, const SharingStrategy& strategy,
    double ridge, DType type, bool substitutes) {
  const ModelConfig& c = transformer.config();
  absl::Status s = CheckSet(c, fit, transformer.max_rows(), "projection fit");
  if (!s.ok()) return s;
  if (!(ridge > 0))
    return absl::InvalidArgumentError(absl::StrFormat("ridge %g must be > 0", ridge));
  if (strategy.n_layers() != c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy has %d layers, the model %d", strategy.n_layers(), c.n_layers));
  }
  const int N = fit.samples, T = fit.tokens, L = c.n_layers, dim = c.dim;
  const int q = c.n_heads * c.head_dim;
  bool any_fit = false;
  for (int l = 0; l < L; ++l)
    any_fit |= strategy.source(l) < l || (substitutes && strategy.drops(l));
  if (!any_fit) return std::shared_ptr<const OutputProjections>();

  Backend& backend = transformer.backend();
  const int batch = std::max(1, std::min(N, transformer.max_rows() / T));
  auto layout = FitKvLayout::Create(backend, c, strategy, N, T);
  if (!layout.ok()) return layout.status();
  auto xbuf = backend.Allocate(size_t(batch) * T * dim * sizeof(float));
  if (!xbuf.ok()) return xbuf.status();
  float* x = (*xbuf)->f32();
  std::vector<int32_t> positions(size_t(batch) * T);
  for (size_t r = 0; r < positions.size(); ++r) positions[r] = static_cast<int32_t>(r % T);
  std::vector<BatchSeq> seqs(batch);
  for (int b = 0; b < batch; ++b) seqs[b] = {b * T, T, 0};

  std::vector<float> hidden(size_t(N) * T * dim);  // residual entering the current layer
  for (int s0 = 0; s0 < N; s0 += batch) {
    const int rows = std::min(batch, N - s0) * T;
    transformer.Embed(fit.sample(s0), rows, x);
    backend.CopyToHost(x, size_t(rows) * dim * 4, hidden.data() + size_t(s0) * T * dim);
  }
  std::vector<int> layers;
  std::vector<std::vector<float>> matrices;
  std::vector<LinearSubstituteF32> fitted_substitutes;
  std::vector<std::shared_ptr<const OutputProjections>> fitted;  // keep the bytes alive
  std::vector<std::unique_ptr<PreparedWeight>> prepared;
  std::vector<Engine::ProjectionEntry> prepared_substitutes;
  std::vector<float> a_own(size_t(batch) * T * q), a_shared(size_t(batch) * T * q);
  for (int l = 0; l < L; ++l) {
    if (substitutes && strategy.drops(l)) {
      // The layer attends over its own K/V (own_layer) to give what its dropped attention
      // would have added; the substitute is fitted to that from the normed input.
      SubstituteSums capture(backend, L, dim, batch * T, {l});
      for (int s0 = 0; s0 < N; s0 += batch) {
        const int nb = std::min(batch, N - s0), rows = nb * T;
        const size_t bytes = size_t(rows) * dim * 4, off = size_t(s0) * T * dim;
        (*layout)->set_first_input(s0);
        (*layout)->set_own_layer(l);
        backend.CopyFromHost(hidden.data() + off, bytes, x);
        transformer.RunLayers(l, l + 1, absl::MakeConstSpan(seqs.data(), nb), positions.data(),
                              rows, **layout, x, &capture);
        (*layout)->set_own_layer(-1);
      }
      // Stored type first, as for the projections below.
      auto one = SolveSubstitute(capture.sums(l), l, ridge, type, dim, q);
      if (!one.ok()) return one.status();
      auto entry = Engine::PrepareProjections(backend, *one);
      if (!entry.ok()) return entry.status();
      (*layout)->set_substitute(l, entry->SubstituteOf(l));
      prepared_substitutes.push_back(std::move(*entry));
      fitted_substitutes.push_back(
          {l, (*one)->SubstituteMatrixF32(0), (*one)->SubstituteBiasF32(0)});
    }
    if (strategy.source(l) < l) {
      RidgeAccumulator sums(q);
      for (int s0 = 0; s0 < N; s0 += batch) {
        const int nb = std::min(batch, N - s0), rows = nb * T;
        const size_t bytes = size_t(rows) * dim * 4, off = size_t(s0) * T * dim;
        (*layout)->set_first_input(s0);
        for (int own : {1, 0}) {
          (*layout)->set_own_layer(own ? l : -1);
          backend.CopyFromHost(hidden.data() + off, bytes, x);
          AttentionCapture capture(backend, l, q, own ? a_own.data() : a_shared.data());
          transformer.RunLayers(l, l + 1, absl::MakeConstSpan(seqs.data(), nb), positions.data(),
                                rows, **layout, x, &capture);
        }
        (*layout)->set_own_layer(-1);
        sums.Add(a_shared.data(), a_own.data(), rows);
      }
      auto w = SolveRidgeProjection(sums, transformer.OutputProjectionF32(l), dim, ridge);
      if (!w.ok()) {
        return absl::Status(w.status().code(),
                            absl::StrFormat("layer %d: %s", l, w.status().message()));
      }
      // Stored type first, so later layers are fitted against what the engine applies.
      auto one = OutputProjections::FromF32(type, dim, q, {l}, {*w});
      if (!one.ok()) return one.status();
      auto p = backend.Prepare((*one)->LayerTensor(0));
      if (!p.ok()) return p.status();
      (*layout)->set_projection(l, p->get());
      prepared.push_back(std::move(*p));
      layers.push_back(l);
      matrices.push_back((*one)->LayerF32(0));
      fitted.push_back(std::move(*one));
    }
    for (int s0 = 0; s0 < N; s0 += batch) {
      const int nb = std::min(batch, N - s0), rows = nb * T;
      const size_t bytes = size_t(rows) * dim * 4, off = size_t(s0) * T * dim;
      (*layout)->set_first_input(s0);
      backend.CopyFromHost(hidden.data() + off, bytes, x);
      transformer.RunLayers(l, l + 1, absl::MakeConstSpan(seqs.data(), nb), positions.data(), rows,
                            **layout, x);
      backend.CopyToHost(x, bytes, hidden.data() + off);
    }
  }
  return OutputProjections::FromF32(type, dim, q, std::move(layers), matrices, fitted_substitutes);
}

absl::StatusOr<std::vector<std::shared_ptr<const OutputProjections>>> FitEachSubstitute(
    Transformer& transformer, const CalibrationSet& fit, double ridge, DType type) {
  const ModelConfig& c = transformer.config();
  absl::Status s = CheckSet(c, fit, transformer.max_rows(), "projection fit");
  if (!s.ok()) return s;
  if (!(ridge > 0))
    return absl::InvalidArgumentError(absl::StrFormat("ridge %g must be > 0", ridge));
  const int N = fit.samples, T = fit.tokens, L = c.n_layers, dim = c.dim;
  Backend& backend = transformer.backend();
  const int batch = std::max(1, std::min(N, transformer.max_rows() / T));
  const SharingStrategy identity = SharingStrategy::Identity(L, "");
  auto layout = FitKvLayout::Create(backend, c, identity, N, T);
  if (!layout.ok()) return layout.status();
  auto xbuf = backend.Allocate(size_t(batch) * T * dim * sizeof(float));
  if (!xbuf.ok()) return xbuf.status();
  std::vector<int32_t> positions(size_t(batch) * T);
  for (size_t r = 0; r < positions.size(); ++r) positions[r] = static_cast<int32_t>(r % T);
  std::vector<BatchSeq> seqs(batch);
  for (int b = 0; b < batch; ++b) seqs[b] = {b * T, T, 0};

  // Every layer's input and contribution in one unshared pass: with only layer l dropped, the
  // residual stream entering l is the unshared model's.
  std::vector<int> layers(L - 1);
  std::iota(layers.begin(), layers.end(), 1);
  SubstituteSums capture(backend, L, dim, batch * T, layers);
  for (int s0 = 0; s0 < N; s0 += batch) {
    const int nb = std::min(batch, N - s0), rows = nb * T;
    (*layout)->set_first_input(s0);
    transformer.Embed(fit.sample(s0), rows, (*xbuf)->f32());
    transformer.RunLayers(0, L, absl::MakeConstSpan(seqs.data(), nb), positions.data(), rows,
                          **layout, (*xbuf)->f32(), &capture);
  }
  std::vector<std::shared_ptr<const OutputProjections>> out(L);
  const int q = c.n_heads * c.head_dim;
  for (int l = 1; l < L; ++l) {
    auto one = SolveSubstitute(capture.sums(l), l, ridge, type, dim, q);
    if (!one.ok()) return one.status();
    out[l] = std::move(*one);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ProjectionCalibrator>> ProjectionCalibrator::Create(
    const Model& model, const CalibrationSet& fit, const CalibrationSet& score, int threads) {
  std::unique_ptr<ProjectionCalibrator> p(new ProjectionCalibrator(model, fit, score));
  const ModelConfig& c = model.config();
  EngineOptions o;
  // Two windows per step at the usual 128 tokens: [256][vocab] logits (50 MB for SmolLM2).
  o.max_step_rows = std::max({256, fit.tokens, score.tokens});
  o.kv_pool_bytes = int64_t(o.max_step_rows) * c.KvBytesPerToken();
  for (auto [set, what] : {std::pair{&fit, "projection fit"}, {&score, "projection scoring"}}) {
    absl::Status s = CheckSet(c, *set, o.max_step_rows, what);
    if (!s.ok()) return s;
  }
  auto engine = Engine::Create(model, MakeCpuBackend(threads), o);
  if (!engine.ok()) return engine.status();
  p->engine_ = std::move(*engine);
  auto unshared = p->ScoreNll(nullptr);
  if (!unshared.ok()) return unshared.status();
  p->unshared_nll_ = *unshared;
  return p;
}

absl::StatusOr<double> ProjectionCalibrator::ScoreNll(
    std::shared_ptr<const SharingStrategy> strategy) {
  const int N = score_.samples, T = score_.tokens, vocab = model_.config().vocab_size;
  const int per_step = std::max(1, 256 / T);
  double sum = 0;
  std::vector<float> logits;
  for (int s0 = 0; s0 < N; s0 += per_step) {
    const int nb = std::min(per_step, N - s0);
    std::vector<SeqId> seqs;
    std::vector<StepInput> step;
    for (int b = 0; b < nb; ++b) {
      auto seq = engine_->AddSequence(strategy);
      if (!seq.ok()) {
        for (SeqId id : seqs) engine_->RemoveSequence(id);
        return seq.status();
      }
      seqs.push_back(*seq);
      step.push_back({*seq, absl::MakeConstSpan(score_.sample(s0 + b), T), true});
    }
    absl::Status s = engine_->Step(step, &logits);
    for (SeqId id : seqs) engine_->RemoveSequence(id);
    if (!s.ok()) return s;
    for (int b = 0; b < nb; ++b) {
      const int32_t* ids = score_.sample(s0 + b);
      for (int t = 0; t + 1 < T; ++t) {
        sum -= LogProb(absl::MakeConstSpan(logits.data() + (size_t(b) * T + t) * vocab, vocab),
                       ids[t + 1]);
      }
    }
  }
  return sum / (double(N) * (T - 1));
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> ProjectionCalibrator::Fit(
    const SharingStrategy& strategy, double ridge, DType type, bool substitutes) {
  return FitOutputProjections(engine_->transformer(), fit_, strategy, ridge, type, substitutes);
}

absl::StatusOr<std::vector<std::shared_ptr<const OutputProjections>>>
ProjectionCalibrator::FitEachSubstitute(double ridge, DType type) {
  return kvshare::FitEachSubstitute(engine_->transformer(), fit_, ridge, type);
}

absl::StatusOr<CalibratedProjections> ProjectionCalibrator::Calibrate(
    const SharingStrategy& strategy, const std::vector<double>& ridges, DType type,
    bool substitutes) {
  if (ridges.empty()) return absl::InvalidArgumentError("calibration: no ridge strength to try");
  auto plain = strategy.WithProjections(nullptr);
  if (!plain.ok()) return plain.status();
  CalibratedProjections out;
  auto uncalibrated = ScoreNll(std::make_shared<const SharingStrategy>(*plain));
  if (!uncalibrated.ok()) return uncalibrated.status();
  out.uncalibrated_score_nll = *uncalibrated;
  out.score_nll = *uncalibrated;
  double best = 0;
  std::shared_ptr<const OutputProjections> best_p;
  for (double ridge : ridges) {
    auto p = Fit(*plain, ridge, type, substitutes);
    if (!p.ok()) return p.status();
    if (*p == nullptr) return out;  // nothing shares (or drops): nothing to fit
    auto with = plain->WithProjections(*p);
    if (!with.ok()) return with.status();
    auto nll = ScoreNll(std::make_shared<const SharingStrategy>(std::move(*with)));
    if (!nll.ok()) return nll.status();
    out.tried.push_back({ridge, *nll});
    if (best_p == nullptr || *nll < best) {
      best_p = *p;
      best = *nll;
      out.ridge = ridge;
    }
  }
  // Projections that do not beat the plain strategy on the scoring set are not kept.
  if (best_p != nullptr && best < out.uncalibrated_score_nll) {
    out.projections = best_p;
    out.score_nll = best;
  } else {
    out.ridge = 0;
  }
  return out;
}

}  // namespace kvshare
