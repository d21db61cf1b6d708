#include "common/engine/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"

namespace kvshare {

Transformer::Transformer(const Model& model, Backend& backend, int max_rows)
    : model_(model), backend_(backend), max_rows_(max_rows) {}

Transformer::~Transformer() = default;

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(const Model& model,
                                                                 Backend& backend, int max_rows) {
  if (max_rows < 1) return absl::InvalidArgumentError("transformer: max_rows must be >= 1");
  std::unique_ptr<Transformer> t(new Transformer(model, backend, max_rows));
  absl::Status s = t->Init();
  if (!s.ok()) return s;
  return t;
}

absl::Status Transformer::Init() {
  const ModelConfig& c = config();
  const ModelWeights& w = model_.weights();
  // Each weight as the backend prepares it; when the backend keeps a copy, the file's pages of
  // it leave the process's resident memory as the copy grows (so the peak holds a slice of a
  // tensor twice, not the model nor the 170 MB embedding of Gemma 3 270M), and whatever is
  // left of them when it is done.
  auto prepare = [&](const Tensor& t, std::unique_ptr<PreparedWeight>* out) -> absl::Status {
    const void* released = t.data;
    auto p = backend_.PrepareWeight(t, [&](const void* read_until) {
      model_.ReleaseResidentRange(released,
                                  static_cast<size_t>(static_cast<const uint8_t*>(read_until) -
                                                      static_cast<const uint8_t*>(released)));
      released = read_until;
    });
    if (!p.ok()) return p.status();
    *out = std::move(*p);
    if (!(*out)->reads_source()) model_.ReleaseResidentPages(t);
    return absl::OkStatus();
  };
  absl::Status s = prepare(w.token_embedding, &embedding_);
  // A tied classifier is the embedding tensor itself: one prepared copy serves both (Prepare of
  // the same tensor gives the same weight; a second copy is the vocabulary's size again, 178 MB
  // for Gemma 3 270M's Q8_0 embedding).
  const bool tied = w.output.data == w.token_embedding.data &&
                    w.output.type == w.token_embedding.type &&
                    w.output.shape == w.token_embedding.shape;
  if (s.ok() && !tied) s = prepare(w.output, &output_owned_);
  output_ = tied ? embedding_.get() : output_owned_.get();
  layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers && s.ok(); ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerParams& p = layers_[l];
    for (auto [t, out] : {std::pair{&lw.wq, &p.wq},
                          {&lw.wk, &p.wk},
                          {&lw.wv, &p.wv},
                          {&lw.wo, &p.wo},
                          {&lw.w_gate, &p.gate},
                          {&lw.w_up, &p.up},
                          {&lw.w_down, &p.down}}) {
      if (s.ok()) s = prepare(*t, out);
    }
  }
  if (!s.ok()) return s;
  if (c.sliding_window > 0 && !backend_.SupportsAttentionWindow()) {
    return absl::UnimplementedError(absl::StrFormat(
        "transformer: %s has sliding-window layers (window %d) and backend %s does not "
        "implement windowed attention",
        c.name, c.sliding_window, backend_.name()));
  }

  // Norm weights: per layer the attention norm then the FFN norm, then the final norm (fp32).
  const size_t norm_floats = (2 * size_t(c.n_layers) + 1) * c.dim;
  std::vector<float> norms(norm_floats);
  for (int l = 0; l < c.n_layers; ++l) {
    std::memcpy(&norms[(2 * l) * c.dim], w.layers[l].attn_norm.data, c.dim * 4);
    std::memcpy(&norms[(2 * l + 1) * c.dim], w.layers[l].ffn_norm.data, c.dim * 4);
  }
  std::memcpy(&norms[2 * size_t(c.n_layers) * c.dim], w.output_norm.data, c.dim * 4);

  auto alloc = [&](size_t floats, std::unique_ptr<Buffer>* out) -> absl::Status {
    auto b = backend_.Allocate(std::max<size_t>(floats, 1) * 4);
    if (!b.ok()) return b.status();
    *out = std::move(*b);
    return absl::OkStatus();
  };
  const size_t R = max_rows_;
  const size_t q_dim = size_t(c.n_heads) * c.head_dim, kv_dim = size_t(c.n_kv_heads) * c.head_dim;
  for (auto [floats, out] : {std::pair{norm_floats, &norm_weights_},
                             {R * c.dim, &xb_},
                             {R * c.dim, &xg_},
                             {R * q_dim, &q_},
                             {R * kv_dim, &k_},
                             {R * kv_dim, &v_},
                             {R * q_dim, &att_},
                             {R * c.hidden_dim, &hb_},
                             {R * c.hidden_dim, &hb2_}}) {
    if (s.ok()) s = alloc(floats, out);
  }
  if (!s.ok()) return s;
  backend_.CopyFromHost(norms.data(), norm_floats * 4, norm_weights_->data());
  if (c.IsGemma3()) {
    // Per layer: post-attention norm [dim], post-FFN norm [dim], q norm [hd], k norm [hd]. The
    // q norm also carries the model's score scale over the kernels' 1/sqrt(head_dim).
    const int hd = c.head_dim;
    const size_t per_layer = 2 * size_t(c.dim) + 2 * size_t(hd);
    const float q_scale =
        c.attention_scale > 0 ? c.attention_scale * std::sqrt(static_cast<float>(hd)) : 1.0f;
    std::vector<float> g(per_layer * c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& lw = w.layers[l];
      float* dst = &g[l * per_layer];
      std::memcpy(dst, lw.post_attn_norm.data, c.dim * 4);
      std::memcpy(dst + c.dim, lw.post_ffn_norm.data, c.dim * 4);
      const float* qn = static_cast<const float*>(lw.q_norm.data);
      for (int i = 0; i < hd; ++i) dst[2 * c.dim + i] = qn[i] * q_scale;
      std::memcpy(dst + 2 * c.dim + hd, lw.k_norm.data, hd * 4);
    }
    if (s = alloc(g.size(), &gemma_norms_); !s.ok()) return s;
    backend_.CopyFromHost(g.data(), g.size() * 4, gemma_norms_->data());
  }
  kv_positions_.reserve(R);
  return absl::OkStatus();
}

void Transformer::Embed(const int32_t* ids, int rows, float* x) {
  backend_.Embed(*embedding_, ids, rows, x);
  const float scale = config().embedding_scale;
  if (scale != 1.0f) backend_.Scale(x, scale, size_t(rows) * config().dim);
}

void Transformer::RunLayers(int first, int last, absl::Span<const BatchSeq> seqs,
                            const int32_t* positions, int rows, KvLayout& kv, float* x,
                            ForwardObserver* observer) {
  const ModelConfig& c = config();
  const int dim = c.dim, hd = c.head_dim, kv_dim = c.n_kv_heads * hd, q_dim = c.n_heads * hd;
  const float* norms = norm_weights_->f32();
  float* xb = xb_->f32();  // normed input [rows][dim]
  float* q = q_->f32();    // [rows][n_heads][hd]
  float* k = k_->f32();    // [kv rows][n_kv_heads][hd]
  float* v = v_->f32();
  float* att = att_->f32();  // [rows][n_heads][hd]
  float* hb = hb_->f32();    // [rows][hidden]
  float* hb2 = hb2_->f32();
  const int n_inputs = static_cast<int>(seqs.size());
  const bool gemma = c.IsGemma3();
  const size_t gemma_floats = 2 * size_t(dim) + 2 * size_t(hd);
  att_seqs_.resize(n_inputs);
  att_geo_.resize(n_inputs);
  kv_row0_.resize(n_inputs);

  for (int l = first; l < last; ++l) {
    const LayerParams& p = layers_[l];
    const float theta = c.LayerRopeTheta(l);
    // Gemma 3: [post-attention norm][post-FFN norm][q norm][k norm] of this layer.
    const float* gn = gemma ? gemma_norms_->f32() + l * gemma_floats : nullptr;
    // Inputs whose strategy drops this layer's attention take no part in it (issue 18): no
    // K/V, no attention; x is unchanged, or gets their linear substitute's h M^T + b. When
    // every input drops it without a substitute, the block is skipped.
    bool any_attends = false, any_substitute = false;
    for (int i = 0; i < n_inputs; ++i) {
      const bool drop = kv.DropsAttention(i, l);
      any_attends |= !drop;
      any_substitute |= drop && kv.AttentionSubstitute(i, l).weight != nullptr;
    }
    if (any_attends || any_substitute) {
      backend_.RmsNorm(x, norms + size_t(2 * l) * dim, rows, dim, c.norm_eps, xb);
      if (observer != nullptr) observer->OnAttentionInput(l, xb, rows);
    }
    if (any_attends) {
      // Attention block. K/V only for inputs whose strategy makes this layer an owner; a
      // sharing layer skips its projections and writes nothing (docs/METHOD.md §1).
      int kv_rows = 0;
      bool all_own = true;
      for (int i = 0; i < n_inputs; ++i) {
        const bool owns = kv.Owns(i, l);
        all_own &= owns;
        kv_row0_[i] = owns ? kv_rows : -1;
        if (owns) kv_rows += seqs[i].n;
      }
      const float* kv_in = xb;
      const int32_t* kv_pos = positions;
      if (all_own) {  // q, k, v of the same rows: one pass over xb
        const PreparedWeight* w[] = {p.wq.get(), p.wk.get(), p.wv.get()};
        float* out[] = {q, k, v};
        backend_.MatMulSameInput(w, xb, rows, out);
      } else {
        backend_.MatMul(*p.wq, xb, rows, q);
        if (kv_rows > 0) {  // gather the owning inputs' rows
          float* xg = xg_->f32();
          kv_positions_.clear();
          for (int i = 0; i < n_inputs; ++i) {
            if (kv_row0_[i] < 0) continue;
            backend_.Copy(xb + size_t(seqs[i].row0) * dim, size_t(seqs[i].n) * dim * 4,
                          xg + size_t(kv_row0_[i]) * dim);
            kv_positions_.insert(kv_positions_.end(), positions + seqs[i].row0,
                                 positions + seqs[i].row0 + seqs[i].n);
          }
          kv_in = xg;
          kv_pos = kv_positions_.data();
          const PreparedWeight* w[] = {p.wk.get(), p.wv.get()};
          float* out[] = {k, v};
          backend_.MatMulSameInput(w, kv_in, kv_rows, out);
        }
      }
      if (gemma) backend_.RmsNorm(q, gn + 2 * dim, rows * c.n_heads, hd, c.norm_eps, q);
      backend_.Rope(q, positions, rows, c.n_heads, hd, theta);
      if (observer != nullptr) observer->OnQuery(l, q, rows);

      if (kv_rows > 0) {
        if (gemma) {
          backend_.RmsNorm(k, gn + 2 * dim + hd, kv_rows * c.n_kv_heads, hd, c.norm_eps, k);
        }
        backend_.Rope(k, kv_pos, kv_rows, c.n_kv_heads, hd, theta);
        for (int i = 0; i < n_inputs; ++i) {
          if (kv_row0_[i] < 0) continue;
          const float* ki = k + size_t(kv_row0_[i]) * kv_dim;
          const float* vi = v + size_t(kv_row0_[i]) * kv_dim;
          backend_.WriteKv(kv.InputGeometry(i, l), kv.pool(), kv.Table(i, l).data(),
                           seqs[i].start_pos, seqs[i].n, ki, vi, kv.Tail(i, l));
          if (observer != nullptr) observer->OnKv(l, i, ki, vi, seqs[i].n);
        }
      }
      int n_att = 0;
      for (int i = 0; i < n_inputs; ++i) {
        if (kv.DropsAttention(i, l)) continue;
        const absl::Span<const int32_t> table = kv.Table(i, l);
        att_geo_[n_att] = &kv.InputGeometry(i, l);
        AttentionSeq& a = att_seqs_[n_att++];
        a.q_row = seqs[i].row0;
        a.n_q = seqs[i].n;
        a.start_pos = seqs[i].start_pos;
        a.block_table = table.data();
        a.n_blocks = static_cast<int>(table.size());
        a.tail = kv.Tail(i, l);
        // A local layer sees its window whichever layer's cache it reads (docs/METHOD.md).
        a.window = c.IsLocalLayer(l) ? c.sliding_window : 0;
      }
      // One call per KV type among the inputs (a plan may store this layer in another type
      // than its batch-mates' do); each call writes only its own inputs' rows of att.
      bool one_type = true;
      for (int a = 1; a < n_att; ++a) one_type &= att_geo_[a]->type == att_geo_[0]->type;
      if (one_type) {
        if (n_att > 0) {
          backend_.Attention(*att_geo_[0], kv.pool(), att_seqs_.data(), n_att, q, c.n_heads, att);
        }
      } else {
        for (KvType t : kAllKvTypes) {
          att_group_.clear();
          const KvGeometry* geo = nullptr;
          for (int a = 0; a < n_att; ++a) {
            if (att_geo_[a]->type != t) continue;
            att_group_.push_back(att_seqs_[a]);
            geo = att_geo_[a];
          }
          if (geo != nullptr) {
            backend_.Attention(*geo, kv.pool(), att_group_.data(), int(att_group_.size()), q,
                               c.n_heads, att);
          }
        }
      }
      if (observer != nullptr) observer->OnAttentionOutput(l, att, rows);
    }
    if (any_attends || any_substitute) {
      // x += att W_o, one GEMM per run of consecutive inputs with the same projection (the
      // model's, or their strategy's replacement); a dropping input's rows get their
      // substitute's h M^T + b (h still in xb: the runs write disjoint rows), or nothing.
      for (int i = 0; i < n_inputs;) {
        const bool drop = kv.DropsAttention(i, l);
        const PreparedWeight* wo = drop ? nullptr : kv.OutputProjection(i, l);
        const KvLayout::Substitute sub =
            drop ? kv.AttentionSubstitute(i, l) : KvLayout::Substitute{};
        int j = i + 1;
        while (j < n_inputs && kv.DropsAttention(j, l) == drop &&
               (drop ? kv.AttentionSubstitute(j, l) == sub : kv.OutputProjection(j, l) == wo)) {
          ++j;
        }
        const int r0 = seqs[i].row0, n = seqs[j - 1].row0 + seqs[j - 1].n - r0;
        if (!drop) {
          backend_.MatMul(wo != nullptr ? *wo : *p.wo, att + size_t(r0) * q_dim, n,
                          xb + size_t(r0) * dim);
          if (gemma) {
            backend_.RmsNorm(xb + size_t(r0) * dim, gn, n, dim, c.norm_eps, xb + size_t(r0) * dim);
          }
          backend_.Add(x + size_t(r0) * dim, xb + size_t(r0) * dim, size_t(n) * dim);
        } else if (sub.weight != nullptr) {
          float* out = hb + size_t(r0) * dim;  // the FFN's buffer, free until the FFN
          backend_.MatMul(*sub.weight, xb + size_t(r0) * dim, n, out);
          backend_.AddToRows(out, sub.bias, n, dim);
          backend_.Add(x + size_t(r0) * dim, out, size_t(n) * dim);
        }
        i = j;
      }
      if (observer != nullptr) observer->OnAttentionContribution(l, xb, rows);
    }

    // Feed-forward block (SwiGLU; Gemma 3: GeGLU, then the post-FFN norm).
    backend_.RmsNorm(x, norms + size_t(2 * l + 1) * dim, rows, dim, c.norm_eps, xb);
    {
      const PreparedWeight* w[] = {p.gate.get(), p.up.get()};
      float* out[] = {hb, hb2};
      backend_.MatMulSameInput(w, xb, rows, out);
    }
    if (gemma) {
      backend_.GeluMul(hb, hb2, size_t(rows) * c.hidden_dim, hb);
    } else {
      backend_.SiluMul(hb, hb2, size_t(rows) * c.hidden_dim, hb);
    }
    backend_.MatMul(*p.down, hb, rows, xb);
    if (gemma) backend_.RmsNorm(xb, gn + dim, rows, dim, c.norm_eps, xb);
    backend_.Add(x, xb, size_t(rows) * dim);
    if (observer != nullptr) observer->OnLayerOutput(l, x, rows);
  }
}

void Transformer::FinalNorm(const float* x, int rows, float* out) {
  const ModelConfig& c = config();
  backend_.RmsNorm(x, norm_weights_->f32() + size_t(2 * c.n_layers) * c.dim, rows, c.dim,
                   c.norm_eps, out);
}

void Transformer::Logits(const float* h, int rows, float* out) {
  backend_.LogitsMatMul(*output_, h, rows, out);
}

std::vector<float> Transformer::OutputProjectionF32(int layer) {
  const ModelConfig& c = config();
  const int q_dim = c.n_heads * c.head_dim, dim = c.dim;
  // Rows of the identity through the weight: row r of e W_o^T is column r of W_o.
  std::vector<float> eye, cols;
  std::vector<float> out(size_t(dim) * q_dim);
  for (int r0 = 0; r0 < q_dim; r0 += max_rows_) {
    const int n = std::min(max_rows_, q_dim - r0);
    eye.assign(size_t(n) * q_dim, 0.0f);
    for (int r = 0; r < n; ++r) eye[size_t(r) * q_dim + r0 + r] = 1.0f;
    backend_.CopyFromHost(eye.data(), eye.size() * 4, att_->data());
    backend_.MatMul(*layers_[layer].wo, att_->f32(), n, xb_->f32());
    cols.resize(size_t(n) * dim);
    backend_.CopyToHost(xb_->f32(), cols.size() * 4, cols.data());
    for (int r = 0; r < n; ++r) {
      for (int d = 0; d < dim; ++d) out[size_t(d) * q_dim + r0 + r] = cols[size_t(r) * dim + d];
    }
  }
  return out;
}

}  // namespace kvshare
