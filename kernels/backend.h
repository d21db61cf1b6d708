// The seam between the engine and the hardware: every numeric op the forward pass needs.
//
// A Backend owns its memory (host memory for the CPU, device memory for CUDA): activations and
// the KV pool live in Buffers it allocates, and every float* handed to an op points into one.
// Ops are synchronous from the caller's point of view and may use the backend's threads.
// A Backend is used by one engine thread at a time (not thread-safe).
//
// No op knows about KV sharing: attention reads the cache through a block table, and which
// layer's table that is is decided by the KV cache (common/engine), not here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/kv_type.h"
#include "kernels/tensor.h"

namespace kvshare {

// Memory owned by a backend (device memory for a GPU backend: never dereference data() on the
// host). Freed when destroyed.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() = 0;
  virtual size_t size() const = 0;
  float* f32() { return static_cast<float*>(data()); }
};

// A weight matrix prepared for a backend (it may be the stored bytes as they are, repacked,
// or uploaded). Opaque to the engine.
class PreparedWeight {
 public:
  virtual ~PreparedWeight() = default;
  virtual const Tensor& tensor() const = 0;
  // Whether the backend reads the source tensor's bytes after Prepare; false when it holds a
  // copy of its own (repacked, or uploaded), so the source's pages may leave memory.
  virtual bool reads_source() const { return true; }
};

// Told, while a backend copies a weight (PrepareWeight), how far into the source's bytes it
// has read for the last time: the bytes before `read_until` are not read again. The owner of
// the bytes may then drop their file pages as the copy grows, so that the peak holds a slice
// of a tensor twice rather than a whole one. Calls come in increasing order; a backend that
// reads the source in place never calls it.
using SourceProgress = std::function<void(const void* read_until)>;

// Host-side arrays an op takes (ids, pos, block_table, seqs) are read before the op returns.
//
// One sequence's slice of a batched attention call. Its queries are rows
// [q_row, q_row + n_q) of q; query j sits at position start_pos + j and attends (causally) to
// positions [0, start_pos + j], whose K/V are found through block_table (block i holds
// positions [i * block_tokens, (i + 1) * block_tokens)). Positions [0, start_pos + n_q) are
// stored; for an int4 pool block 0 and the block holding the last of them, when not full, are
// read from `tail` (kernels/kv_type.h), which is null for the other types. window > 0
// (sliding-window attention, Gemma 3's local layers) narrows query j to positions
// [max(0, start_pos + j - window + 1), start_pos + j] (llama.cpp's rule: masked when
// pos_q - pos_k >= window); only backends whose SupportsAttentionWindow() is true honour it.
struct AttentionSeq {
  int q_row = 0;
  int n_q = 0;
  int start_pos = 0;
  const int32_t* block_table = nullptr;
  int n_blocks = 0;
  const void* tail = nullptr;
  int window = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  virtual absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) = 0;
  virtual void CopyToHost(const void* src, size_t bytes, void* dst_host) = 0;
  virtual void CopyFromHost(const void* src_host, size_t bytes, void* dst) = 0;
  // Copy between two places in this backend's memory (Buffers); the ranges do not overlap.
  virtual void Copy(const void* src, size_t bytes, void* dst) = 0;
  // Bytes this backend could still allocate now: free device memory for a GPU, available
  // physical memory for the CPU. Sizes the KV pool from a fraction (EngineOptions).
  virtual int64_t FreeMemoryBytes() = 0;
  absl::StatusOr<std::unique_ptr<PreparedWeight>> Prepare(const Tensor& w) {
    return PrepareWeight(w, nullptr);
  }
  // `progress` may be empty.
  virtual absl::StatusOr<std::unique_ptr<PreparedWeight>> PrepareWeight(
      const Tensor& w, const SourceProgress& progress) = 0;

  // out[n][w.rows] = x[n][w.cols] * W^T  (each output row is a dot with each weight row).
  virtual void MatMul(const PreparedWeight& w, const float* x, int n, float* out) = 0;
  // MatMul of each ws[i] (all with x's cols) into outs[i], the same results; a backend may
  // prepare x once for all of them (the CPU backend quantizes it once and splits every weight's
  // work over its pool in one pass). Q, K and V; gate and up. The default calls MatMul for each.
  virtual void MatMulSameInput(absl::Span<const PreparedWeight* const> ws, const float* x, int n,
                               absl::Span<float* const> outs);
  // MatMul for the output projection to vocabulary logits, which a backend may run at a
  // precision of its own (CpuBackendOptions::logits_activations: the strategy searches' scoring
  // forwards). The default is MatMul.
  virtual void LogitsMatMul(const PreparedWeight& w, const float* x, int n, float* out) {
    MatMul(w, x, n, out);
  }
  // out[n][dim] = table rows ids[0..n) converted to fp32.
  virtual void Embed(const PreparedWeight& table, const int32_t* ids, int n, float* out) = 0;
  // out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight, per row of `dim`. out may alias x.
  virtual void RmsNorm(const float* x, const float* weight, int n, int dim, float eps,
                       float* out) = 0;
  // Rotates each (2i, 2i+1) pair of every head of x[n][n_heads][head_dim] in place by
  // angle pos[t] * theta^(-2i/head_dim) (the llama.cpp "normal" / llama2.c convention).
  virtual void Rope(float* x, const int32_t* pos, int n, int n_heads, int head_dim,
                    float theta) = 0;
  // out[i] = silu(gate[i]) * up[i].
  virtual void SiluMul(const float* gate, const float* up, int64_t count, float* out) = 0;
  // out[i] = gelu(gate[i]) * up[i], gelu in its tanh approximation (GeGLU, Gemma 3). The
  // default goes through host copies (correct on any backend, slow on a device).
  virtual void GeluMul(const float* gate, const float* up, int64_t count, float* out);
  // x[i] *= s. The default goes through host copies.
  virtual void Scale(float* x, float s, int64_t count);
  // Whether Attention honours AttentionSeq::window (kernels/backend.h); a model with
  // sliding-window layers refuses a backend without it.
  virtual bool SupportsAttentionWindow() const { return false; }
  // nll[r] = log(sum_v exp(logits[r][v])) - logits[r][targets[r]] for r < rows, the negative
  // log-likelihood of each row's target under the softmax of its logits ([rows][vocab], on the
  // backend); a row whose target is negative gets 0. targets and nll are host memory. The
  // default goes through host copies and sums exp in double (correct on any backend, slow on a
  // device).
  virtual void TargetNll(const float* logits, int rows, int vocab, const int32_t* targets,
                         double* nll);
  // x[i] += y[i].
  virtual void Add(float* x, const float* y, int64_t count) = 0;
  // x[r][j] += row[j] for r < rows, j < dim (a bias on every row). The default calls Add once
  // per row.
  virtual void AddToRows(float* x, const float* row, int rows, int dim);
  // Writes k, v ([n][n_kv_heads][head_dim]) for positions start_pos..start_pos+n-1 into the
  // pool through block_table, stored as g.type (kernels/kv_type.h). Positions arrive in order
  // (start_pos is the number already stored). int4, k4v3: positions go to `tail` (the sequence's
  // f16 tail for this layer, g.tail_bytes()); block 0 stays there, a later block is quantised into
  // the pool when its last position arrives (kernels/kv_type.h); tail is unused (may be null)
  // for the other types.
  virtual void WriteKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos,
                       int n, const float* k, const float* v, void* tail) = 0;
  // Causal grouped-query attention over a pool of type g.type. q: [rows][n_heads][head_dim];
  // out: same shape. Scores are scaled by 1/sqrt(head_dim); query head h reads KV head
  // h / (n_heads/n_kv_heads). A backend that cannot read g.type says so in SupportsKvType.
  virtual void Attention(const KvGeometry& g, const void* pool, const AttentionSeq* seqs,
                         int n_seqs, const float* q, int n_heads, float* out) = 0;
  // OK when WriteKv and Attention handle pools of `type`; else UNIMPLEMENTED naming it.
  virtual absl::Status SupportsKvType(KvType type) const = 0;
  // Whether Attention computes the same numbers from the same f16 block 0 (f16's block, or the
  // f16 tail of a type with one) whether it is stored as type a or as type b: then sequences of
  // the two types that start alike can share the computed start (KvCache::CopyPrefix). The
  // default claims it for equal types only.
  virtual bool ReadsF16BlockZeroAlike(KvType a, KvType b) const { return a == b; }
};

// The CPU backend (OpenBLAS + SIMD + a persistent thread pool). threads <= 0: all cores.
std::unique_ptr<Backend> MakeCpuBackend(int threads);

}  // namespace kvshare
