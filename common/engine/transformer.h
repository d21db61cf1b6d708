// The Llama layers over a Backend: weights prepared once, scratch for up to max_rows rows.
// Where each sequence's K/V live is the caller's business, told through a KvLayout, so the
// serving engine (paged pool) and the strategy search (dense per-sample caches) run the very
// same layer code.
//
// Per layer l (shapes per row, R rows):
//   xb = rmsnorm(x)                       [R][dim]
//   q  = xb Wq, rope(q)                   [R][n_heads][head_dim]
//   for inputs whose strategy makes l an owner:
//     k, v = xb Wk, xb Wv; rope(k)        [R][n_kv_heads][head_dim], written through l's table
//   (a sharing layer skips Wk/Wv and writes nothing: kv_source[l] < l was computed earlier)
//   att = attention(q, table of kv_source[l])
//   x += att Wo                           (Wo: the input's replacement projection, if any)
//   (an input whose strategy drops l's attention skips all three: its att is zero, so x is
//    unchanged; when every input drops it, nothing of the attention block runs)
//   x += W_down(silu(rmsnorm(x) W_gate) * (rmsnorm(x) W_up))
//
// Gemma 3 (ModelConfig::IsGemma3) changes, per layer: q and k are RMS-normed per head before
// RoPE, RoPE uses the layer's base (local or global), local layers attend to their window only
// (AttentionSeq::window), att W_o and the FFN output are RMS-normed before their residual adds,
// and the FFN is GeGLU (gelu_tanh instead of silu). Embed multiplies by embedding_scale.
//
// Not thread-safe: one thread drives it (the backend parallelises inside each op).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/model.h"
#include "kernels/backend.h"

namespace kvshare {

// One input (sequence) of a forward pass: rows [row0, row0 + n), at positions
// start_pos .. start_pos + n - 1.
struct BatchSeq {
  int row0 = 0;
  int n = 0;
  int start_pos = 0;
};

// Where K/V are, per input and layer, and what an input's strategy changes in a layer's
// attention (dropped, or a replacement output projection).
class KvLayout {
 public:
  virtual ~KvLayout() = default;
  virtual const KvGeometry& geometry() const = 0;
  // The geometry `layer` reads and writes: its owning layer's KV type (kv_source[layer]'s).
  virtual const KvGeometry& LayerGeometry(int /*layer*/) const { return geometry(); }
  // The geometry `layer` reads and writes for input i: under a KV plan (issue 17) inputs of
  // one step may store one layer in different types.
  virtual const KvGeometry& InputGeometry(int /*input*/, int layer) const {
    return LayerGeometry(layer);
  }
  virtual float* pool() = 0;
  // The int4 tail of the cache `layer` reads for input i (kernels/kv_type.h); null otherwise.
  virtual void* Tail(int /*input*/, int /*layer*/) const { return nullptr; }
  // Whether `layer` computes and stores K/V for input i.
  virtual bool Owns(int input, int layer) const = 0;
  // The block table of the cache `layer` reads for input i — its source's; for an owning
  // layer that is its own table, which it writes. Covers at least start_pos + n positions.
  virtual absl::Span<const int32_t> Table(int input, int layer) const = 0;
  // Whether input i's strategy drops `layer`'s attention (then Owns is false, Table unused).
  virtual bool DropsAttention(int /*input*/, int /*layer*/) const { return false; }
  // The output projection for input i's rows at `layer` instead of the model's W_o, or null.
  // Must stay valid for the RunLayers call.
  virtual const PreparedWeight* OutputProjection(int /*input*/, int /*layer*/) const {
    return nullptr;
  }
  // For a layer input i's strategy drops: the linear substitute that stands in for its
  // attention (common/strategy/output_projections.h), x += RMSNorm(x) M^T + b, or nulls (the
  // attention adds nothing). `bias` is backend memory of dim floats. Valid for the RunLayers call.
  struct Substitute {
    const PreparedWeight* weight = nullptr;
    const float* bias = nullptr;
    bool operator==(const Substitute& o) const { return weight == o.weight && bias == o.bias; }
  };
  virtual Substitute AttentionSubstitute(int /*input*/, int /*layer*/) const { return {}; }
};

// Optional probes into the forward pass (calibration and strategy search use them).
// Every pointer an observer receives points into the backend's memory: device memory under the
// CUDA backend, never to be dereferenced on the host (read it with Backend::CopyToHost, which
// also waits for the ops queued before it). Only the CPU backend hands out host pointers.
class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // Post-RoPE K and V of an owning layer for input i's rows: [n][n_kv_heads][head_dim].
  virtual void OnKv(int /*layer*/, int /*input*/, const float* /*k*/, const float* /*v*/,
                    int /*n*/) {}
  // The attention block's normed input h = RMSNorm(x) * attn_norm of `layer`, all rows:
  // [rows][dim] (only when some input attends or has a substitute).
  virtual void OnAttentionInput(int /*layer*/, const float* /*h*/, int /*rows*/) {}
  // The queries attention reads (post-RoPE) of `layer`, all rows: [rows][n_heads][head_dim]
  // (only when some input attends).
  virtual void OnQuery(int /*layer*/, const float* /*q*/, int /*rows*/) {}
  // What the attention block adds to the residual stream of `layer` (after W_o, and Gemma 3's
  // post-attention norm), [rows][dim]; rows of inputs that drop the layer are unspecified.
  virtual void OnAttentionContribution(int /*layer*/, const float* /*delta*/, int /*rows*/) {}
  // The attention output of `layer` before the output projection, for all rows:
  // [rows][n_heads][head_dim] (rows of inputs that drop the layer are unspecified).
  virtual void OnAttentionOutput(int /*layer*/, const float* /*att*/, int /*rows*/) {}
  // The residual stream after `layer` for all rows: [rows][dim].
  virtual void OnLayerOutput(int /*layer*/, const float* /*x*/, int /*rows*/) {}
};

class Transformer {
 public:
  static absl::StatusOr<std::unique_ptr<Transformer>> Create(const Model& model, Backend& backend,
                                                             int max_rows);
  ~Transformer();

  const ModelConfig& config() const { return model_.config(); }
  const Model& model() const { return model_; }
  Backend& backend() { return backend_; }
  int max_rows() const { return max_rows_; }

  // x[rows][dim] = embeddings of ids.
  void Embed(const int32_t* ids, int rows, float* x);
  // Runs layers [first, last) over x[rows][dim] in place. positions[r] is row r's position.
  void RunLayers(int first, int last, absl::Span<const BatchSeq> seqs, const int32_t* positions,
                 int rows, KvLayout& kv, float* x, ForwardObserver* observer = nullptr);
  // out[rows][dim] = final RMSNorm of x (out may alias x).
  void FinalNorm(const float* x, int rows, float* out);
  // out[rows][vocab] = h W_out^T for final-normed rows h.
  void Logits(const float* h, int rows, float* out);
  // Layer `layer`'s W_o as the backend applies it (dequantized), [dim][n_heads * head_dim]
  // row-major: what a calibrated replacement is fitted against (issue 18). Uses the scratch.
  std::vector<float> OutputProjectionF32(int layer);

 private:
  Transformer(const Model& model, Backend& backend, int max_rows);
  absl::Status Init();

  struct LayerParams {
    std::unique_ptr<PreparedWeight> wq, wk, wv, wo, gate, up, down;
  };
  const Model& model_;
  Backend& backend_;
  const int max_rows_;
  std::unique_ptr<PreparedWeight> embedding_;
  std::unique_ptr<PreparedWeight> output_owned_;  // null when the classifier is tied
  const PreparedWeight* output_ = nullptr;        // the classifier: output_owned_ or embedding_
  std::vector<LayerParams> layers_;
  std::unique_ptr<Buffer> norm_weights_;  // attn/ffn norms of every layer, then the final norm
  std::unique_ptr<Buffer> gemma_norms_;   // Gemma 3: per layer post-attn, post-FFN, q, k norms
  std::unique_ptr<Buffer> xb_, xg_, q_, k_, v_, att_, hb_, hb2_;  // scratch for max_rows
  std::vector<int32_t> kv_positions_;
  std::vector<int> kv_row0_;
  std::vector<AttentionSeq> att_seqs_;
  std::vector<const KvGeometry*> att_geo_;  // parallel to att_seqs_
  std::vector<AttentionSeq> att_group_;     // att_seqs_ of one KV type
};

}  // namespace kvshare
