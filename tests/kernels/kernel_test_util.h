// Helpers for the kernel tests: seeded random weights in any DType, the SIMD levels this CPU
// can run, and backends at a given level.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/quant.h"
#include "kernels/tensor.h"

namespace kvshare::testing {

// A weight tensor that owns its bytes.
struct OwnedTensor {
  std::vector<uint8_t> bytes;
  Tensor tensor;
};

inline std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// K-quant blocks (no quantizer here): random bytes, with every fp16 scale replaced by a
// random value in [0.002, 0.02) (dmin too) so that weights stay finite and of order 1.
inline void RandomSuperBlocks(DType type, std::mt19937& rng, std::vector<uint8_t>* bytes) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f);
  for (uint8_t& b : *bytes) b = static_cast<uint8_t>(byte(rng));
  const int block = GetDTypeInfo(type).block_bytes;
  std::vector<int> fp16_at;  // byte offsets of the fp16 fields in a block
  switch (type) {
    case DType::kQ3_K:
      fp16_at = {108};
      break;
    case DType::kQ4_K:
    case DType::kQ5_K:
      fp16_at = {0, 2};
      break;
    case DType::kQ6_K:
      fp16_at = {208};
      break;
    default:
      break;
  }
  for (size_t at = 0; at + block <= bytes->size(); at += block) {
    for (int off : fp16_at) {
      const uint16_t h = cpu::Fp32ToFp16(scale(rng));
      std::memcpy(bytes->data() + at + off, &h, 2);
    }
  }
}

// rows x cols random weights (N(0, 1) times a per-row scale in [0.5, 2]), stored as `type`.
inline OwnedTensor RandomWeight(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> w = RandomFloats(rows * cols, seed);
  std::mt19937 rng(seed ^ 0x9e3779b9u);
  std::uniform_real_distribution<float> row_scale(0.5f, 2.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = row_scale(rng);
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] *= s;
  }
  OwnedTensor t;
  const size_t row_bytes = StorageBytes(type, cols);
  t.bytes.resize(row_bytes * rows);
  if (GetDTypeInfo(type).block_elems == cpu::kSuperBlock) {
    RandomSuperBlocks(type, rng, &t.bytes);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      cpu::QuantizeRow(type, &w[r * cols], cols, t.bytes.data() + r * row_bytes);
    }
  }
  t.tensor.name = "test.weight";
  t.tensor.type = type;
  t.tensor.shape = {cols, rows};
  t.tensor.data = t.bytes.data();
  t.tensor.nbytes = t.bytes.size();
  return t;
}

inline std::vector<cpu::Isa> SupportedIsas() {
  std::vector<cpu::Isa> isas = {cpu::Isa::kScalar};
  if (cpu::DetectIsa() >= cpu::Isa::kAvx2) isas.push_back(cpu::Isa::kAvx2);
  if (cpu::DetectIsa() >= cpu::Isa::kAvx512) isas.push_back(cpu::Isa::kAvx512);
  return isas;
}

inline std::unique_ptr<Backend> CpuBackendAt(cpu::Isa isa, int threads,
                                             cpu::MatMulOptions matmul = {}) {
  CpuBackendOptions o;
  o.threads = threads;
  o.max_isa = isa;
  o.matmul = matmul;
  return MakeCpuBackend(o);
}

inline const std::vector<DType>& AllDTypes() {
  static const std::vector<DType> kTypes = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                                            DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1,
                                            DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  return kTypes;
}

// The types the CUDA backend supports (tests/cuda/).
inline const std::vector<DType>& CudaDTypes() {
  static const std::vector<DType> kTypes = {DType::kF32,  DType::kF16,  DType::kBF16,
                                            DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};
  return kTypes;
}

// `cols` rounded up to a whole number of the type's blocks (K-quants: 256 elements).
inline int64_t ColsFor(DType t, int64_t cols) {
  const int64_t block = GetDTypeInfo(t).block_elems;
  return (cols + block - 1) / block * block;
}

inline bool IsQuantized(DType t) {
  return t != DType::kF32 && t != DType::kF16 && t != DType::kBF16;
}

}  // namespace kvshare::testing
