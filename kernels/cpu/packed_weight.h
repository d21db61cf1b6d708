// A weight prepared for the CPU kernels.
//
// F32, F16 and BF16 weights are used in place (the view points at the caller's bytes, which
// must outlive the weight). Quantized weights (Q8_0, Q4_0, Q4_1) are repacked once, at load,
// into groups of 16 rows so that one 512-bit register holds 4 bytes of each of 16 rows: a
// VNNI dot product (vpdpbusd) then accumulates 16 output rows at once, with no horizontal
// sums. The repacked copy has the GGUF size (plus zero padding: rows of the last group, and a
// last block when a row has an odd number of blocks); the source bytes are not used after
// Prepare. There is never an fp32 copy.
//
// Group g (rows 16g .. 16g+15; rows past the end are zero) is a sequence of units of two
// blocks (the kernels then read one sequential stream; every unit is a whole number of cache
// lines). Unit u holds blocks b = 2u and 2u + 1 (a missing last block is zero):
//   quants of b, quants of b + 1: kChunks x 64 bytes each; chunk k is, for each row
//           r = 0..15, the dword r = bytes 4k..4k+3 of that row's block quants:
//             Q4_0 / Q4_1: kChunks = 4, the GGUF nibble bytes as they are (byte j: element j
//                          low nibble, element j + 16 high nibble);
//             Q8_0:        kChunks = 8, q + 128 as unsigned bytes (VNNI multiplies u8 by s8);
//   d of b, d of b + 1:   16 fp16 scales each (row r at index r);
//   m of b, m of b + 1:   16 fp16 offsets each (Q4_1 only).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace kvshare::cpu {

constexpr int kGroupRows = 16;

struct AlignedDeleter {
  void operator()(void* p) const;
};
using AlignedBytes = std::unique_ptr<uint8_t[], AlignedDeleter>;
// 64-byte aligned, zeroed.
AlignedBytes AllocateAligned(size_t bytes);

class CpuWeight : public PreparedWeight {
 public:
  // repack: repack quantized types into groups (false keeps the GGUF rows, for the scalar
  // path on CPUs without AVX2).
  static absl::StatusOr<std::unique_ptr<CpuWeight>> Create(const Tensor& w, bool repack);

  const Tensor& tensor() const override { return tensor_; }
  DType type() const { return tensor_.type; }
  int64_t rows() const { return tensor_.rows(); }
  int64_t cols() const { return tensor_.cols(); }
  bool packed() const { return packed_ != nullptr; }

  // Packed layout (packed() only).
  int64_t n_groups() const { return n_groups_; }
  int64_t blocks() const { return cols() / 32; }
  const uint8_t* group(int64_t g) const { return packed_.get() + g * group_bytes_; }
  int quant_bytes() const { return quant_bytes_; }  // per block and group: 256 or 512
  int unit_bytes() const { return unit_bytes_; }    // per two blocks and group
  const uint8_t* block_quants(int64_t g, int64_t b) const {
    return group(g) + (b >> 1) * unit_bytes_ + (b & 1) * quant_bytes_;
  }
  const uint16_t* block_scales(int64_t g, int64_t b) const {
    return reinterpret_cast<const uint16_t*>(group(g) + (b >> 1) * unit_bytes_ + 2 * quant_bytes_ +
                                             (b & 1) * 32);
  }
  const uint16_t* block_offsets(int64_t g, int64_t b) const { return block_scales(g, b) + 32; }

  // Row r in fp32 (any type, packed or not).
  void DequantizeRow(int64_t r, float* dst) const;
  // Rows [16g, 16g + 16) in fp32 into dst[16][cols] (rows past the end come out zero).
  void DequantizeGroup(int64_t g, float* dst) const;

 private:
  CpuWeight() = default;

  Tensor tensor_;  // data points at the caller's bytes; not read after Prepare when packed
  AlignedBytes packed_;
  int64_t n_groups_ = 0;
  int64_t group_bytes_ = 0;
  int quant_bytes_ = 0;
  int unit_bytes_ = 0;
};

}  // namespace kvshare::cpu
