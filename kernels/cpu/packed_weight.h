// A weight prepared for the CPU kernels.
//
// F32, F16 and BF16 weights are used in place (the view points at the caller's bytes, which
// must outlive the weight). Quantized weights are repacked once, at load, into groups of 16
// rows so that one 512-bit register holds 4 bytes of each of 16 rows: a VNNI dot product
// (vpdpbusd) then accumulates 16 output rows at once, with no horizontal sums. The source
// bytes are not used after Prepare. There is never an fp32 copy.
//
// Every quantized type is stored in one of six packed forms (Pack), all on 32-element blocks:
//   Pack     from          quants                  scale per block        offset per block
//   kQ4_0    Q4_0          nibbles (q + 8)         fp16 d                 -
//   kQ4_1    Q4_1          nibbles                 fp16 d                 fp16 m
//   kQ5_0    Q5_0          nibbles and high bits   fp16 d                 -
//                          (q + 16 in 5 bits)
//   kQ8_0    Q8_0          bytes (q + 128)         fp16 d                 -
//   kQ4F     Q4_K          nibbles                 fp32 d*sc              fp32 -(dmin*m)
//   kQ8F     Q5_1, Q3_K,   bytes (q + 128)         fp32, one per 16       fp32 (Q5_1, Q5_K;
//            Q5_K, Q6_K                            elements               absent otherwise)
// Each form reproduces the reference decoder (quant.h DequantizeRow) bit for bit; a K-quant
// sub-block's d * sc is exact in fp32 (an 11-bit fp16 mantissa times a 6- or 8-bit integer), so
// the K-quants keep their exact values with the integer part unpacked (DecodeBlock32). kQ5_0
// is the GGUF's own 5.5 bits per weight (it was a Q8_0 block, 8.5, until Q5_0 weights, most
// of Gemma 3 270M's and SmolLM2 Q4_K_M's, made the repacked model 30 MB larger than its file).
// The K-quants still cost size: Q4_K 6 bits per weight (GGUF 4.5), Q8F 10 or 11 (Q6_K 6.6,
// Q5_K 5.5), against the kernels staying two (nibble and byte) families on one block structure.
//
// Group g (rows 16g .. 16g+15; rows past the end are zero) is a sequence of units of two
// blocks (the kernels then read one sequential stream; every unit is a whole number of cache
// lines). Unit u holds blocks b = 2u and 2u + 1 (a missing last block is zero):
//   quants of b, quants of b + 1: kChunks x 64 bytes each; chunk k is, for each row
//           r = 0..15, the dword r = bytes 4k..4k+3 of that row's block quants:
//             nibble forms: kChunks = 4, byte j holds element j in its low nibble and element
//                           j + 16 in its high one (the GGUF Q4_x order); kQ5_0 then has a
//                           fifth chunk of high bits: dword r byte e holds in bit k the high
//                           bit of element 4k + e and in bit 4 + k that of element 16 + 4k + e
//                           (so chunk k's are one shift by k away from bit 0 / bit 4 of the
//                           byte its nibbles sit in);
//             byte forms:   kChunks = 8, q + 128 as unsigned bytes (VNNI multiplies u8 by s8);
//   scales of b, scales of b + 1: 16 fp16 (row r at index r); kQ4F: 16 fp32; kQ8F: 32 fp32,
//           rows' scales of elements 0..15, then of elements 16..31;
//   offsets of b, offsets of b + 1 (kQ4_1: 16 fp16; kQ4F and kQ8F with offsets: 16 fp32).
#pragma once

#include <xmmintrin.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace kvshare::cpu {

constexpr int kGroupRows = 16;
// Groups repacked between two reports to Create's progress (1,024 rows: Gemma 3's Q8_0
// embedding releases its file pages 680 KB at a time instead of 170 MB at the end).
constexpr int64_t kProgressGroups = 64;

enum class Pack { kNone, kQ4_0, kQ4_1, kQ8_0, kQ4F, kQ8F, kQ5_0 };

struct AlignedDeleter {
  void operator()(void* p) const;
};
using AlignedBytes = std::unique_ptr<uint8_t[], AlignedDeleter>;
// 64-byte aligned, zeroed.
AlignedBytes AllocateAligned(size_t bytes);

class CpuWeight : public PreparedWeight {
 public:
  // repack: repack quantized types into groups (false keeps the GGUF rows, for the scalar
  // path on CPUs without AVX2). progress (may be empty) hears of the rows repacked, every
  // kProgressGroups groups (backend.h SourceProgress).
  static absl::StatusOr<std::unique_ptr<CpuWeight>> Create(const Tensor& w, bool repack,
                                                           const SourceProgress& progress = {});

  const Tensor& tensor() const override { return tensor_; }
  bool reads_source() const override { return !packed(); }
  DType type() const { return tensor_.type; }
  int64_t rows() const { return tensor_.rows(); }
  int64_t cols() const { return tensor_.cols(); }
  bool packed() const { return packed_ != nullptr; }
  Pack pack() const { return pack_; }
  bool has_offsets() const { return offset_bytes_ > 0; }

  // Packed layout (packed() only).
  int64_t n_groups() const { return n_groups_; }
  int64_t blocks() const { return cols() / 32; }
  const uint8_t* group(int64_t g) const { return packed_.get() + g * group_bytes_; }
  // Part k of `parts` of group g's bytes into L1 (software prefetch; g < n_groups()). The
  // group kernels run one group over several token tiles, and each prefetches a part of the
  // next group: on a weight larger than the caches (the 49,152-row output projection) its
  // first tile would otherwise wait on memory (see kernels_bench --only=gemm).
  void PrefetchGroupPart(int64_t g, int64_t k, int64_t parts) const {
    const int64_t lines = (group_bytes_ + 63) / 64, per_part = (lines + parts - 1) / parts;
    const char* p = reinterpret_cast<const char*>(group(g));
    for (int64_t l = k * per_part; l < lines && l < (k + 1) * per_part; ++l) {
      _mm_prefetch(p + 64 * l, _MM_HINT_T0);
    }
  }
  int quant_bytes() const { return quant_bytes_; }  // per block and group: 256, 320 or 512
  int unit_bytes() const { return unit_bytes_; }    // per two blocks and group
  const uint8_t* block_quants(int64_t g, int64_t b) const {
    return group(g) + (b >> 1) * unit_bytes_ + (b & 1) * quant_bytes_;
  }
  // fp16 scales / offsets (kQ4_0, kQ4_1, kQ8_0) or fp32 ones (kQ4F, kQ8F).
  const uint8_t* scale_bytes(int64_t g, int64_t b) const {
    return group(g) + (b >> 1) * unit_bytes_ + 2 * quant_bytes_ + (b & 1) * scale_bytes_;
  }
  const uint8_t* offset_bytes(int64_t g, int64_t b) const {
    return group(g) + (b >> 1) * unit_bytes_ + 2 * (quant_bytes_ + scale_bytes_) +
           (b & 1) * offset_bytes_;
  }
  const uint16_t* block_scales(int64_t g, int64_t b) const {
    return reinterpret_cast<const uint16_t*>(scale_bytes(g, b));
  }
  const uint16_t* block_offsets(int64_t g, int64_t b) const {
    return reinterpret_cast<const uint16_t*>(offset_bytes(g, b));
  }
  const float* block_scales_f32(int64_t g, int64_t b) const {
    return reinterpret_cast<const float*>(scale_bytes(g, b));
  }
  const float* block_offsets_f32(int64_t g, int64_t b) const {
    return reinterpret_cast<const float*>(offset_bytes(g, b));
  }

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
  Pack pack_ = Pack::kNone;
  int quant_bytes_ = 0;
  int scale_bytes_ = 0;
  int offset_bytes_ = 0;
  int unit_bytes_ = 0;
};

}  // namespace kvshare::cpu
