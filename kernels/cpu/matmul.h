// MatMul on the CPU: picks a kernel by weight type, batch size and SIMD level, and splits the
// output over the thread pool (by rows and token ranges only, so results do not depend on the
// thread count).
//
//   weight type       n < gemm_min_tokens                 n >= gemm_min_tokens
//   F32/F16/BF16      DenseRows (fp32 dots)               OpenBLAS sgemm per 128-row tile
//                                                          (F16/BF16 tiles converted first)
//   quantized types   Int8Groups (x -> int8, VNNI)        Int8Groups (the same kernel: an
//                     or F32Groups (exact mode)            integer GEMM) or F32Groups (exact
//                                                          mode); dequantized tiles + sgemm
//                                                          with quant_gemm = kSgemm
//
// Measured (SmolLM2-135M matmuls, Zen 4, 2 threads): decode n = 1 is memory-bound and both
// quantized kernels stream at ~25 GB/s; at n = 4 int8 gives 806 tok/s against 575 for fp32;
// at n = 512 the integer GEMM gives ~1900 tok/s against ~600 for dequantized tiles + sgemm.
// int8 activations are llama.cpp's approach; on SmolLM2 they move the mean NLL of a WikiText
// sentence by +0.002 nats and logits by up to ~0.5, so exact mode exists for references; two
// int8 digits (Activations::kInt8x2) keep the integer kernels at about 16-bit activations.
//
// Scratch (quantized activations, dequantized tiles) grows to the largest call and is reused:
// no allocation once a shape has been seen.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/packed_weight.h"
#include "kernels/cpu/thread_pool.h"

namespace kvshare::cpu {

enum class QuantGemm { kInt8, kSgemm };

// How a quantized weight's matmul takes its activations x.
//   kF32     exact: fp32 x, the packed quants converted to fp32 in registers (F32Groups).
//   kInt8    x quantized to int8 per 32-block (llama.cpp's approach; error up to half an int8
//            step of each block's scale), integer dot products. On SmolLM2-135M Q4_1 it raises
//            WikiText-2 perplexity by 1.3% (28.37 -> 28.74 on 16k tokens), beyond the 0.5% the
//            engine allows; ~3x faster than kF32 in prefill and batched decode (same speed at
//            batch 1).
//   kInt8x2  x as two int8 digits per 32-block (quant.h: q + q2 / 256 steps, error <= max|x| /
//            65024, about 16 bits) and two integer dots per block, what the KV plan search
//            measures with: on SmolLM2 Q4_1, 4,096 WikiText-2 tokens, mean NLL 3.408612 against
//            kF32's 3.408615 (int8: 3.422488), the whole command in 6.2 s against 8.4 (int8:
//            4.5); `kvshare eval --kv-type f32 --threads 2 --activations ...`.
enum class Activations { kF32, kInt8, kInt8x2 };
const char* ActivationsName(Activations a);
// The Activations ActivationsName spells `name`; nullopt for any other string.
std::optional<Activations> ActivationsFromName(std::string_view name);

struct MatMulOptions {
  Activations activations = Activations::kF32;
  // n at or above which the GEMM paths are used.
  int gemm_min_tokens = 16;
  // Quantized weights, n >= gemm_min_tokens: the group kernels (integer GEMM with int8
  // activations, F32Groups in exact mode) or dequantized tiles + sgemm.
  QuantGemm quant_gemm = QuantGemm::kInt8;
};

class MatMulRunner {
 public:
  MatMulRunner(ThreadPool* pool, Isa isa, const MatMulOptions& options);

  // out[n][w.rows()] = x[n][w.cols()] * W^T.
  void Run(const CpuWeight& w, const float* x, int n, float* out);
  // Run for each weight (all of x's cols) with its own out, the same bits. When every weight
  // takes the group kernels (packed, and not the sgemm tiles), x is quantized once and the
  // weights' groups are split over the pool in one pass (Q, K and V; gate and up); otherwise
  // one Run each.
  void RunSameInput(absl::Span<const CpuWeight* const> ws, const float* x, int n,
                    absl::Span<float* const> outs);

  const MatMulOptions& options() const { return options_; }

 private:
  void RunDense(const CpuWeight& w, const float* x, int n, float* out);
  // The group kernels for every weight of ws (packed, the same cols) on one quantized x.
  void RunQuantized(absl::Span<const CpuWeight* const> ws, const float* x, int n,
                    absl::Span<float* const> outs);
  // Groups [g0, g1) of w for tokens [t0, t1), on the batch QuantizeBatch made of x.
  void RunGroups(const CpuWeight& w, const float* x, int t0, int t1, int64_t g0, int64_t g1,
                 float* out);
  void RunSgemmTiles(const CpuWeight& w, const float* x, int n, float* out);
  bool integer_dots() const { return options_.activations != Activations::kF32; }
  // Whether a packed weight's matmul of n tokens goes through dequantized tiles + sgemm.
  bool SgemmTiles(int n) const {
    return n >= options_.gemm_min_tokens && options_.quant_gemm == QuantGemm::kSgemm;
  }
  void QuantizeBatch(const float* x, int n, int64_t cols);
  // batch_.qsum_lo for the n quantized rows (Pack::kQ8F weights).
  void SumLowHalves(int n);
  float* ThreadScratch(int thread, size_t floats);

  ThreadPool* pool_;
  Isa isa_;
  MatMulOptions options_;

  std::vector<int8_t> xq_, xq2_;
  std::vector<float> xscale_, xsum_;
  std::vector<int32_t> xqsum_, xqsum_lo_, xq2sum_, xq2sum_lo_;
  QuantizedBatch batch_;
  std::vector<int64_t> group_start_;  // RunQuantized's: each weight's first group, then the total
  std::vector<std::vector<float>> scratch_;  // per thread
};

}  // namespace kvshare::cpu
