// Helpers for the kernel tests: seeded random weights in any DType, the SIMD levels this CPU
// can run, and backends at a given level.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
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
  for (int64_t r = 0; r < rows; ++r) {
    cpu::QuantizeRow(type, &w[r * cols], cols, t.bytes.data() + r * row_bytes);
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
  static const std::vector<DType> kTypes = {DType::kF32,  DType::kF16,  DType::kBF16,
                                            DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};
  return kTypes;
}

inline bool IsQuantized(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_1;
}

}  // namespace kvshare::testing
