#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/log_sum_exp.h"
#include "kernels/cpu/packed_weight.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/thread_pool.h"

namespace kvshare {
namespace {

using cpu::Isa;

// Element-wise ops below this many elements run on the calling thread: waking the pool costs
// more than the work.
constexpr int64_t kParallelElements = 1 << 16;
constexpr int64_t kElementChunk = 1 << 14;
// Weights one MatMulSameInput call shares an input across (Q, K, V); more go one by one.
constexpr size_t kMaxSameInput = 4;

class HostBuffer : public Buffer {
 public:
  HostBuffer(cpu::AlignedBytes bytes, size_t size) : bytes_(std::move(bytes)), size_(size) {}
  void* data() override { return bytes_.get(); }
  size_t size() const override { return size_; }

 private:
  cpu::AlignedBytes bytes_;
  size_t size_;
};

class CpuBackend : public Backend {
 public:
  CpuBackend(int threads, Isa isa, const cpu::MatMulOptions& matmul,
             std::optional<cpu::Activations> logits_activations, bool int4_in_place)
      : isa_(isa),
        pool_(threads),
        matmul_(&pool_, isa, matmul),
        attention_(&pool_, isa, int4_in_place) {
    if (logits_activations.has_value() && *logits_activations != matmul.activations) {
      cpu::MatMulOptions o = matmul;
      o.activations = *logits_activations;
      logits_matmul_.emplace(&pool_, isa, o);
    }
    // Our pool parallelizes over tiles; OpenBLAS's own threads would compete with it.
    openblas_set_num_threads(1);
  }

  std::string name() const override {
    const cpu::Activations a = matmul_.options().activations;
    std::string activations = a == cpu::Activations::kF32
                                  ? ""
                                  : absl::StrCat(", ", cpu::ActivationsName(a), " activations");
    if (logits_matmul_.has_value()) {
      absl::StrAppend(&activations, ", ",
                      cpu::ActivationsName(logits_matmul_->options().activations), " for logits");
    }
    return absl::StrFormat("cpu (%s, %d threads%s)", cpu::IsaName(isa_), pool_.threads(),
                           activations);
  }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    cpu::AlignedBytes mem = cpu::AllocateAligned(bytes);
    if (mem == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cpu backend: cannot allocate %u bytes", bytes));
    }
    return std::unique_ptr<Buffer>(new HostBuffer(std::move(mem), bytes));
  }

  void CopyToHost(const void* src, size_t bytes, void* dst_host) override {
    std::memcpy(dst_host, src, bytes);
  }
  void CopyFromHost(const void* src_host, size_t bytes, void* dst) override {
    std::memcpy(dst, src_host, bytes);
  }
  void Copy(const void* src, size_t bytes, void* dst) override { std::memcpy(dst, src, bytes); }
  int64_t FreeMemoryBytes() override {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  }

  absl::StatusOr<std::unique_ptr<PreparedWeight>> PrepareWeight(
      const Tensor& w, const SourceProgress& progress) override {
    auto cw = cpu::CpuWeight::Create(w, /*repack=*/isa_ != Isa::kScalar, progress);
    if (!cw.ok()) return cw.status();
    return std::unique_ptr<PreparedWeight>(std::move(*cw));
  }

  void MatMul(const PreparedWeight& w, const float* x, int n, float* out) override {
    matmul_.Run(static_cast<const cpu::CpuWeight&>(w), x, n, out);
  }
  void MatMulSameInput(absl::Span<const PreparedWeight* const> ws, const float* x, int n,
                       absl::Span<float* const> outs) override {
    const cpu::CpuWeight* cws[kMaxSameInput];
    if (ws.size() > kMaxSameInput) {
      Backend::MatMulSameInput(ws, x, n, outs);
      return;
    }
    for (size_t i = 0; i < ws.size(); ++i) cws[i] = static_cast<const cpu::CpuWeight*>(ws[i]);
    matmul_.RunSameInput(absl::MakeConstSpan(cws, ws.size()), x, n, outs);
  }
  void LogitsMatMul(const PreparedWeight& w, const float* x, int n, float* out) override {
    (logits_matmul_.has_value() ? *logits_matmul_ : matmul_)
        .Run(static_cast<const cpu::CpuWeight&>(w), x, n, out);
  }

  void Embed(const PreparedWeight& table, const int32_t* ids, int n, float* out) override {
    const auto& t = static_cast<const cpu::CpuWeight&>(table);
    for (int i = 0; i < n; ++i) t.DequantizeRow(ids[i], out + static_cast<int64_t>(i) * t.cols());
  }

  void RmsNorm(const float* x, const float* weight, int n, int dim, float eps,
               float* out) override {
    if (static_cast<int64_t>(n) * dim < kParallelElements) {
      cpu::RmsNormRows(isa_, x, weight, n, dim, eps, out);
      return;
    }
    const int rows_per_task = std::max<int>(1, kElementChunk / dim);
    pool_.ParallelFor((n + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
      const int t0 = static_cast<int>(task) * rows_per_task;
      const int64_t off = static_cast<int64_t>(t0) * dim;
      cpu::RmsNormRows(isa_, x + off, weight, std::min(rows_per_task, n - t0), dim, eps, out + off);
    });
  }

  void Rope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, float theta) override {
    if (head_dim > 1024) {
      cpu::ref::Rope(x, pos, n, n_heads, head_dim, theta);
      return;
    }
    if (head_dim != rope_head_dim_ || theta != rope_theta_) {
      rope_freq_.resize(head_dim / 2);
      cpu::RopeFrequencies(head_dim, theta, rope_freq_.data());
      rope_head_dim_ = head_dim;
      rope_theta_ = theta;
    }
    if (static_cast<int64_t>(n) * n_heads * head_dim < kParallelElements) {
      cpu::RopeRows(x, pos, n, n_heads, head_dim, rope_freq_.data());
      return;
    }
    const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
    const int rows_per_task = static_cast<int>(std::max<int64_t>(1, kElementChunk / row));
    pool_.ParallelFor((n + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
      const int t0 = static_cast<int>(task) * rows_per_task;
      cpu::RopeRows(x + t0 * row, pos + t0, std::min(rows_per_task, n - t0), n_heads, head_dim,
                    rope_freq_.data());
    });
  }

  void SiluMul(const float* gate, const float* up, int64_t count, float* out) override {
    ForRanges(count, [&](int64_t i0, int64_t len) {
      cpu::SiluMulRange(isa_, gate + i0, up + i0, len, out + i0);
    });
  }

  void GeluMul(const float* gate, const float* up, int64_t count, float* out) override {
    ForRanges(count, [&](int64_t i0, int64_t len) {
      cpu::GeluMulRange(isa_, gate + i0, up + i0, len, out + i0);
    });
  }

  void TargetNll(const float* logits, int rows, int vocab, const int32_t* targets,
                 double* nll) override {
    // Logits are host memory here: read in place, a row per task (a log-sum-exp over the
    // vocabulary each; as LogProb computes it, so the figures do not change).
    pool_.ParallelFor(rows, [&](int64_t r, int) {
      const float* row = logits + size_t(r) * vocab;
      nll[r] = targets[r] < 0 ? 0.0 : cpu::LogSumExp(isa_, row, vocab) - double(row[targets[r]]);
    });
  }

  void Scale(float* x, float s, int64_t count) override {
    ForRanges(count, [&](int64_t i0, int64_t len) {
      for (int64_t i = i0; i < i0 + len; ++i) x[i] *= s;
    });
  }

  bool SupportsAttentionWindow() const override { return true; }

  void Add(float* x, const float* y, int64_t count) override {
    ForRanges(count, [&](int64_t i0, int64_t len) { cpu::AddRange(isa_, x + i0, y + i0, len); });
  }

  void WriteKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
               const float* k, const float* v, void* tail) override {
    if (g.type == KvType::kF32) {  // the common case without the per-type dispatch
      const int64_t kv_dim = g.kv_dim();
      for (int t = 0; t < n; ++t) {
        const int p = start_pos + t;
        float* kd = static_cast<float*>(pool) + block_table[p / g.block_tokens] * g.block_floats() +
                    (p % g.block_tokens) * kv_dim;
        std::memcpy(kd, k + t * kv_dim, kv_dim * sizeof(float));
        std::memcpy(kd + g.block_tokens * kv_dim, v + t * kv_dim, kv_dim * sizeof(float));
      }
      return;
    }
    cpu::StoreKv(g, pool, block_table, start_pos, n, k, v, tail);
  }

  void Attention(const KvGeometry& g, const void* pool, const AttentionSeq* seqs, int n_seqs,
                 const float* q, int n_heads, float* out) override {
    attention_.Run(g, pool, seqs, n_seqs, q, n_heads, out);
  }

  absl::Status SupportsKvType(KvType) const override { return absl::OkStatus(); }
  // int4 and int4a read their tails through the same code (in place, or gathered where int4
  // is not read in place); f16 blocks and k4v3 tails are both gathered to fp32 by the same
  // conversion and attended by the same chunk kernel.
  bool ReadsF16BlockZeroAlike(KvType a, KvType b) const override {
    auto int4_family = [](KvType t) { return t == KvType::kInt4 || t == KvType::kInt4A; };
    auto gathered = [](KvType t) { return t == KvType::kF16 || t == KvType::kK4V3; };
    return a == b || (int4_family(a) && int4_family(b)) || (gathered(a) && gathered(b));
  }

 private:
  template <typename Fn>
  void ForRanges(int64_t count, Fn fn) {
    if (count < kParallelElements) {
      fn(0, count);
      return;
    }
    pool_.ParallelFor((count + kElementChunk - 1) / kElementChunk, [&](int64_t task, int) {
      const int64_t i0 = task * kElementChunk;
      fn(i0, std::min(kElementChunk, count - i0));
    });
  }

  const Isa isa_;
  cpu::ThreadPool pool_;
  cpu::MatMulRunner matmul_;
  std::optional<cpu::MatMulRunner> logits_matmul_;  // LogitsMatMul's, when its activations differ
  cpu::AttentionRunner attention_;
  std::vector<float> rope_freq_;
  int rope_head_dim_ = 0;
  float rope_theta_ = 0.0f;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(const CpuBackendOptions& options) {
  int threads = options.threads;
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = 1;
  const Isa isa = std::min(cpu::DetectIsa(), options.max_isa);
  return std::make_unique<CpuBackend>(threads, isa, options.matmul, options.logits_activations,
                                      options.int4_in_place);
}

std::unique_ptr<Backend> MakeCpuBackend(int threads) {
  CpuBackendOptions options;
  options.threads = threads;
  return MakeCpuBackend(options);
}

}  // namespace kvshare
