// The CPU backend: OpenBLAS for large fp32 GEMMs, SIMD kernels (AVX-512 VNNI or AVX2, chosen at
// run time, scalar otherwise) for quantized matmuls and attention, one persistent thread pool.
//
// Results do not depend on the number of threads (work is split by output rows, heads and
// fixed-size chunks only). They depend on the SIMD level and, for quantized weights, on
// MatMulOptions::activations (see matmul.h).
//
// Prepare: F32/F16/BF16 weights are used in place (the tensor's bytes must outlive the
// prepared weight); Q8_0/Q4_0/Q4_1 are repacked into a copy of the same size (packed_weight.h),
// after which the source bytes are no longer read.
#pragma once

#include <memory>
#include <optional>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul.h"

namespace kvshare {

struct CpuBackendOptions {
  int threads = 0;                       // <= 0: std::thread::hardware_concurrency()
  cpu::Isa max_isa = cpu::Isa::kAvx512;  // a cap below the CPU's level (tests, benches)
  cpu::MatMulOptions matmul;
  // How the output projection to logits (Backend::LogitsMatMul) takes its activations; unset:
  // as matmul.activations. The searches score calibration forwards with two int8 digits and
  // this at one (docs/METHOD.md §4): the projection is a fifth of a forward's work on SmolLM2
  // (49,152 x 576), its one-digit error moves a candidate's mean NLL by at most ~0.002 nats,
  // and it never feeds a later layer.
  std::optional<cpu::Activations> logits_activations;
  // int4 and int4a KV pools on the AVX2 / AVX-512 levels: read the blocks in place, scales
  // folded into the query and the softmax weights (the fast path), or dequantise each chunk to
  // fp32 first, with the products rounded as kv_codec.h's LoadKv rounds them. Both agree with the
  // reference to float rounding per call; over a whole forward pass that rounding does not stay
  // small, since a later layer's int4 codes flip on it (SmolLM2, 4,096 WikiText-2 tokens: mean
  // NLL 3.4127 in place, 3.4146 gathered, f16 3.4042). Tests that hold the pool to the search's
  // simulation bit for bit read gathered.
  bool int4_in_place = true;
};

std::unique_ptr<Backend> MakeCpuBackend(const CpuBackendOptions& options);

}  // namespace kvshare
