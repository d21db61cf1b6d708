#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>

namespace kvshare::cpu {
namespace {

constexpr int64_t kSgemmTileRows = 128;  // rows of W per sgemm call (a multiple of 16)
constexpr int kGemmTokenChunk = 64;      // tokens per task of the integer GEMM
// Tasks per thread of a matmul: the pool gives each thread a contiguous range of them (see
// thread_pool.h). Measured on the SmolLM2 decode sweep, 2 threads: 1 -> 251, 2 -> 271,
// 4 -> 283, 8 -> 268 tok/s.
constexpr int kTasksPerThread = 4;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

const char* ActivationsName(Activations a) {
  switch (a) {
    case Activations::kF32:
      return "f32";
    case Activations::kInt8:
      return "int8";
    case Activations::kInt8x2:
      return "int8x2";
  }
  return "?";
}

std::optional<Activations> ActivationsFromName(std::string_view name) {
  for (Activations a : {Activations::kF32, Activations::kInt8, Activations::kInt8x2}) {
    if (name == ActivationsName(a)) return a;
  }
  return std::nullopt;
}

MatMulRunner::MatMulRunner(ThreadPool* pool, Isa isa, const MatMulOptions& options)
    : pool_(pool), isa_(isa), options_(options), scratch_(pool->threads()) {}

float* MatMulRunner::ThreadScratch(int thread, size_t floats) {
  std::vector<float>& s = scratch_[thread];
  if (s.size() < floats) s.resize(floats);
  return s.data();
}

void MatMulRunner::Run(const CpuWeight& w, const float* x, int n, float* out) {
  if (n <= 0) return;
  // Exact mode keeps the group kernels (F32Groups) at every n: they read each weight group once
  // per 64 tokens and measured faster than dequantized tiles + sgemm even at n = 512 (SmolLM2,
  // 1 thread: 363 vs 338 tok/s prefill, 295 vs 244 at n = 128, 270 vs 64 at n = 16). Tiles +
  // sgemm stay available as QuantGemm::kSgemm.
  if (!w.packed()) {
    RunDense(w, x, n, out);
  } else if (SgemmTiles(n)) {
    RunSgemmTiles(w, x, n, out);
  } else {
    const CpuWeight* ws[] = {&w};
    float* outs[] = {out};
    RunQuantized(ws, x, n, outs);
  }
}

void MatMulRunner::RunSameInput(absl::Span<const CpuWeight* const> ws, const float* x, int n,
                                absl::Span<float* const> outs) {
  if (n <= 0) return;
  bool groups = ws.size() > 1 && !SgemmTiles(n);
  for (const CpuWeight* w : ws) groups &= w->packed() && w->cols() == ws[0]->cols();
  if (groups) {
    RunQuantized(ws, x, n, outs);
  } else {
    for (size_t i = 0; i < ws.size(); ++i) Run(*ws[i], x, n, outs[i]);
  }
}

void MatMulRunner::RunDense(const CpuWeight& w, const float* x, int n, float* out) {
  const int64_t rows = w.rows();
  const bool dense_type =
      w.type() == DType::kF32 || w.type() == DType::kF16 || w.type() == DType::kBF16;
  if (n >= options_.gemm_min_tokens) {
    RunSgemmTiles(w, x, n, out);
    return;
  }
  // Row chunks: kTasksPerThread per thread, at least 16 rows each.
  const int64_t chunk =
      std::max<int64_t>(16, CeilDiv(CeilDiv(rows, kTasksPerThread * pool_->threads()), 16) * 16);
  pool_->ParallelFor(CeilDiv(rows, chunk), [&](int64_t task, int) {
    const int64_t r0 = task * chunk, r1 = std::min(rows, r0 + chunk);
    if (dense_type && isa_ == Isa::kAvx512) {
      avx512::DenseRows(w, x, 0, n, r0, r1, out);
    } else if (dense_type && isa_ == Isa::kAvx2) {
      avx2::DenseRows(w, x, 0, n, r0, r1, out);
    } else {
      scalar::DenseRows(w, x, 0, n, r0, r1, out);
    }
  });
}

void MatMulRunner::QuantizeBatch(const float* x, int n, int64_t cols) {
  const int64_t nb = cols / 32;
  if (static_cast<int64_t>(xq_.size()) < n * cols) xq_.resize(n * cols);
  if (static_cast<int64_t>(xscale_.size()) < n * nb) {
    xscale_.resize(n * nb);
    xsum_.resize(n * nb);
    xqsum_.resize(n * nb);
  }
  batch_ = {xq_.data(), xscale_.data(), xsum_.data(), xqsum_.data(), cols, nb};
  if (options_.activations == Activations::kInt8x2) {
    if (static_cast<int64_t>(xq2_.size()) < n * cols) xq2_.resize(n * cols);
    if (static_cast<int64_t>(xq2sum_.size()) < n * nb) xq2sum_.resize(n * nb);
    batch_.q2 = xq2_.data();
    batch_.q2sum = xq2sum_.data();
  }
  auto quantize = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (isa_ == Isa::kAvx512) {
        avx512::QuantizeActivations(x + t * cols, cols, batch_.Row(t));
      } else {
        avx2::QuantizeActivations(x + t * cols, cols, batch_.Row(t));
      }
    }
  };
  if (n * cols < (1 << 15)) {
    quantize(0, n);
  } else {
    const int64_t per_task = std::max<int64_t>(1, (1 << 14) / cols);
    pool_->ParallelFor(CeilDiv(n, per_task), [&](int64_t task, int) {
      quantize(task * per_task, std::min<int64_t>(n, (task + 1) * per_task));
    });
  }
}

void MatMulRunner::SumLowHalves(int n) {
  const int64_t blocks = n * batch_.nb;
  auto sum_halves = [blocks](const int8_t* q, std::vector<int32_t>* sums) {
    if (static_cast<int64_t>(sums->size()) < blocks) sums->resize(blocks);
    for (int64_t i = 0; i < blocks; ++i) {
      int32_t s = 0;
      for (int j = 0; j < 16; ++j) s += q[i * 32 + j];
      (*sums)[i] = s;
    }
    return sums->data();
  };
  batch_.qsum_lo = sum_halves(batch_.q, &xqsum_lo_);
  if (batch_.q2 != nullptr) batch_.q2sum_lo = sum_halves(batch_.q2, &xq2sum_lo_);
}

void MatMulRunner::RunQuantized(absl::Span<const CpuWeight* const> ws, const float* x, int n,
                                absl::Span<float* const> outs) {
  // The x side both kernels need: int8 blocks (or, exact mode, the fp32 block sums).
  QuantizeBatch(x, n, ws[0]->cols());
  bool q8f = false;
  for (const CpuWeight* w : ws) q8f |= w->pack() == Pack::kQ8F;
  if (integer_dots() && q8f) SumLowHalves(n);
  // The weights' groups one after another: group_start[i] is weight i's first.
  group_start_.assign(1, 0);
  for (const CpuWeight* w : ws) group_start_.push_back(group_start_.back() + w->n_groups());
  const int64_t groups = group_start_.back();
  // Tasks: token chunks x chunks of the groups, about kTasksPerThread per thread (results do
  // not depend on it); a chunk may span two weights.
  const int token_chunk = std::min(n, kGemmTokenChunk);
  const int64_t token_tasks = CeilDiv(n, token_chunk);
  const int64_t want =
      std::max<int64_t>(1, CeilDiv(kTasksPerThread * pool_->threads(), token_tasks));
  const int64_t group_chunk = std::max<int64_t>(1, CeilDiv(groups, want));
  const int64_t group_tasks = CeilDiv(groups, group_chunk);
  pool_->ParallelFor(token_tasks * group_tasks, [&](int64_t task, int) {
    const int t0 = static_cast<int>(task / group_tasks) * token_chunk;
    const int t1 = std::min(n, t0 + token_chunk);
    const int64_t c0 = (task % group_tasks) * group_chunk;
    const int64_t c1 = std::min(groups, c0 + group_chunk);
    for (size_t i = 0; i < ws.size(); ++i) {
      const int64_t g0 = std::max(c0, group_start_[i]) - group_start_[i];
      const int64_t g1 = std::min(c1, group_start_[i + 1]) - group_start_[i];
      if (g0 < g1) RunGroups(*ws[i], x, t0, t1, g0, g1, outs[i]);
    }
  });
}

void MatMulRunner::RunGroups(const CpuWeight& w, const float* x, int t0, int t1, int64_t g0,
                             int64_t g1, float* out) {
  if (integer_dots()) {
    if (isa_ == Isa::kAvx512) {
      avx512::Int8Groups(w, batch_, t0, t1, g0, g1, out);
    } else {
      avx2::Int8Groups(w, batch_, t0, t1, g0, g1, out);
    }
  } else {
    if (isa_ == Isa::kAvx512) {
      avx512::F32Groups(w, x, batch_.sum, t0, t1, g0, g1, out);
    } else {
      avx2::F32Groups(w, x, batch_.sum, t0, t1, g0, g1, out);
    }
  }
}

void MatMulRunner::RunSgemmTiles(const CpuWeight& w, const float* x, int n, float* out) {
  const int64_t rows = w.rows(), cols = w.cols();
  const bool in_place = w.type() == DType::kF32;
  pool_->ParallelFor(CeilDiv(rows, kSgemmTileRows), [&](int64_t task, int thread) {
    const int64_t r0 = task * kSgemmTileRows;
    const int64_t tile = std::min(kSgemmTileRows, rows - r0);
    const float* wt;
    if (in_place) {
      wt = reinterpret_cast<const float*>(w.tensor().row_data(r0));
    } else {
      float* s = ThreadScratch(thread, kSgemmTileRows * cols);
      if (w.packed()) {
        for (int64_t g = 0; g < CeilDiv(tile, kGroupRows); ++g) {
          w.DequantizeGroup(r0 / kGroupRows + g, s + g * kGroupRows * cols);
        }
      } else {
        for (int64_t r = 0; r < tile; ++r) w.DequantizeRow(r0 + r, s + r * cols);
      }
      wt = s;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, static_cast<int>(tile),
                static_cast<int>(cols), 1.0f, x, static_cast<int>(cols), wt, static_cast<int>(cols),
                0.0f, out + r0, static_cast<int>(rows));
  });
}

}  // namespace kvshare::cpu
