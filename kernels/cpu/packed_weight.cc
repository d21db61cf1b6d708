#include "kernels/cpu/packed_weight.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/quant.h"

namespace kvshare::cpu {

void AlignedDeleter::operator()(void* p) const { std::free(p); }

AlignedBytes AllocateAligned(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p != nullptr) std::memset(p, 0, rounded);
  return AlignedBytes(static_cast<uint8_t*>(p));
}

namespace {

Pack PackFor(DType t) {
  switch (t) {
    case DType::kQ4_0:
      return Pack::kQ4_0;
    case DType::kQ4_1:
      return Pack::kQ4_1;
    case DType::kQ8_0:
      return Pack::kQ8_0;
    case DType::kQ5_0:
      return Pack::kQ5_0;
    case DType::kQ4_K:
      return Pack::kQ4F;
    case DType::kQ5_1:
    case DType::kQ3_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return Pack::kQ8F;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      break;
  }
  return Pack::kNone;
}

bool HasOffsets(DType t) {
  return t == DType::kQ4_1 || t == DType::kQ4_K || t == DType::kQ5_1 || t == DType::kQ5_K;
}

// Writes row r (lane of its group) of block b in the byte forms: q + 128 in each chunk.
void PutBytes(const int8_t* q, uint8_t* quants, int lane) {
  for (int k = 0; k < 8; ++k) {
    for (int e = 0; e < 4; ++e)
      quants[k * 64 + lane * 4 + e] = static_cast<uint8_t>(q[4 * k + e]) ^ 0x80;
  }
}

// The nibble forms: byte j = element j | element j + 16 << 4 (q in 0..15).
void PutNibbles(const uint8_t* qs, uint8_t* quants, int lane) {
  for (int k = 0; k < 4; ++k) {
    for (int e = 0; e < 4; ++e) quants[k * 64 + lane * 4 + e] = qs[4 * k + e];
  }
}

// kQ5_0: q5 (0..31, the stored q + 16) as nibbles and the high-bit chunk after them.
void PutFiveBits(const uint8_t* q5, uint8_t* quants, int lane) {
  uint8_t qs[16];
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q5[j] & 15) | (q5[j + 16] & 15) << 4);
  PutNibbles(qs, quants, lane);
  for (int e = 0; e < 4; ++e) {
    uint8_t bits = 0;
    for (int k = 0; k < 4; ++k) {
      bits |= static_cast<uint8_t>((q5[4 * k + e] >> 4) << k);
      bits |= static_cast<uint8_t>((q5[16 + 4 * k + e] >> 4) << (4 + k));
    }
    quants[4 * 64 + lane * 4 + e] = bits;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuWeight>> CpuWeight::Create(const Tensor& w, bool repack,
                                                             const SourceProgress& progress) {
  if (w.shape.empty() || w.cols() <= 0 || w.rows() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': empty shape (cols %d, rows %d)", w.name, w.cols(), w.rows()));
  }
  const DTypeInfo& info = GetDTypeInfo(w.type);
  if (w.cols() % info.block_elems != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': %d columns is not a multiple of the %s block size %d", w.name,
                        w.cols(), info.name, info.block_elems));
  }
  const size_t need = StorageBytes(w.type, w.cols()) * w.rows();
  if (w.data == nullptr || w.nbytes < need) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': %u bytes given, %s [%d x %d] needs %u", w.name, w.nbytes,
                        info.name, w.rows(), w.cols(), need));
  }
  std::unique_ptr<CpuWeight> cw(new CpuWeight());
  cw->tensor_ = w;
  const Pack pack = PackFor(w.type);
  if (!repack || pack == Pack::kNone) return cw;

  const int64_t nb = w.cols() / 32;
  const bool bytes_form = pack == Pack::kQ8_0 || pack == Pack::kQ8F;
  const bool f32_scales = pack == Pack::kQ4F || pack == Pack::kQ8F;
  cw->pack_ = pack;
  cw->quant_bytes_ = bytes_form ? 512 : (pack == Pack::kQ5_0 ? 320 : 256);
  cw->scale_bytes_ = pack == Pack::kQ8F ? 128 : (f32_scales ? 64 : 32);
  cw->offset_bytes_ = HasOffsets(w.type) ? (f32_scales ? 64 : 32) : 0;
  cw->unit_bytes_ = 2 * (cw->quant_bytes_ + cw->scale_bytes_ + cw->offset_bytes_);
  cw->group_bytes_ = (nb + 1) / 2 * cw->unit_bytes_;
  cw->n_groups_ = (w.rows() + kGroupRows - 1) / kGroupRows;
  cw->packed_ = AllocateAligned(cw->group_bytes_ * cw->n_groups_);
  if (cw->packed_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat("weight '%s': cannot allocate %d bytes",
                                                        w.name, cw->group_bytes_ * cw->n_groups_));
  }
  const int8_t zeros[32] = {};
  for (int64_t g = 0; g < cw->n_groups_; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* quants = const_cast<uint8_t*>(cw->block_quants(g, b));
      uint16_t* scales = const_cast<uint16_t*>(cw->block_scales(g, b));
      uint16_t* offsets = const_cast<uint16_t*>(cw->block_offsets(g, b));
      float* scales32 = const_cast<float*>(cw->block_scales_f32(g, b));
      float* offsets32 = const_cast<float*>(cw->block_offsets_f32(g, b));
      for (int r = 0; r < kGroupRows; ++r) {
        const int64_t row = g * kGroupRows + r;
        if (row >= w.rows()) {
          // Padding rows: q = 0 (stored as 128 in the byte forms), scales and offsets 0.
          if (bytes_form) PutBytes(zeros, quants, r);
          continue;
        }
        const uint8_t* src = w.row_data(row);
        switch (w.type) {
          case DType::kQ8_0: {
            const BlockQ8_0& blk = reinterpret_cast<const BlockQ8_0*>(src)[b];
            PutBytes(blk.qs, quants, r);
            scales[r] = blk.d;
            break;
          }
          case DType::kQ4_0: {
            const BlockQ4_0& blk = reinterpret_cast<const BlockQ4_0*>(src)[b];
            PutNibbles(blk.qs, quants, r);
            scales[r] = blk.d;
            break;
          }
          case DType::kQ4_1: {
            const BlockQ4_1& blk = reinterpret_cast<const BlockQ4_1*>(src)[b];
            PutNibbles(blk.qs, quants, r);
            scales[r] = blk.d;
            offsets[r] = blk.m;
            break;
          }
          case DType::kQ5_0: {
            Block32 blk;  // q = q5 - 16
            DecodeBlock32(w.type, src, b, &blk);
            uint8_t q5[32];
            for (int j = 0; j < 32; ++j) q5[j] = static_cast<uint8_t>(blk.q[j] + 16);
            PutFiveBits(q5, quants, r);
            scales[r] = reinterpret_cast<const BlockQ5_0*>(src)[b].d;
            break;
          }
          default: {  // kQ4F, kQ8F
            Block32 blk;
            DecodeBlock32(w.type, src, b, &blk);
            if (pack == Pack::kQ4F) {
              uint8_t qs[16];
              for (int j = 0; j < 16; ++j) {
                qs[j] = static_cast<uint8_t>(blk.q[j] | (blk.q[j + 16] << 4));
              }
              PutNibbles(qs, quants, r);
              scales32[r] = blk.scale[0];
            } else {
              PutBytes(blk.q, quants, r);
              scales32[r] = blk.scale[0];
              scales32[kGroupRows + r] = blk.scale[1];
            }
            if (cw->has_offsets()) offsets32[r] = blk.offset;
            break;
          }
        }
      }
    }
    const int64_t rows_done = std::min(w.rows(), (g + 1) * kGroupRows);
    if (progress && ((g + 1) % kProgressGroups == 0 || rows_done == w.rows())) {
      progress(w.row_data(rows_done));
    }
  }
  return cw;
}

void CpuWeight::DequantizeRow(int64_t r, float* dst) const {
  if (!packed()) {
    cpu::DequantizeRow(tensor_.type, tensor_.row_data(r), cols(), dst);
    return;
  }
  const int64_t g = r / kGroupRows;
  const int lane = static_cast<int>(r % kGroupRows);
  const bool bytes_form = pack_ == Pack::kQ8_0 || pack_ == Pack::kQ8F;
  for (int64_t b = 0; b < blocks(); ++b) {
    const uint8_t* src = block_quants(g, b) + lane * 4;
    int q[32];
    for (int k = 0; k < (bytes_form ? 8 : 4); ++k) {
      for (int e = 0; e < 4; ++e) {
        const uint8_t byte = src[k * 64 + e];
        if (bytes_form) {
          q[4 * k + e] = static_cast<int8_t>(byte ^ 0x80);
        } else {
          q[4 * k + e] = byte & 0x0f;
          q[4 * k + e + 16] = byte >> 4;
        }
        if (pack_ == Pack::kQ5_0) {
          const uint8_t high = src[4 * 64 + e];
          q[4 * k + e] |= ((high >> k) & 1) << 4;
          q[4 * k + e + 16] |= ((high >> (4 + k)) & 1) << 4;
        }
      }
    }
    float* out = dst + b * 32;
    // The reference's order of float operations, per type (quant.cc DequantizeRow).
    switch (pack_) {
      case Pack::kQ8_0:
      case Pack::kQ4_0:
      case Pack::kQ5_0: {
        const float d = Fp16ToFp32(block_scales(g, b)[lane]);
        const int zero = pack_ == Pack::kQ4_0 ? 8 : (pack_ == Pack::kQ5_0 ? 16 : 0);
        for (int j = 0; j < 32; ++j) out[j] = d * (q[j] - zero);
        break;
      }
      case Pack::kQ4_1: {
        const float d = Fp16ToFp32(block_scales(g, b)[lane]);
        const float m = Fp16ToFp32(block_offsets(g, b)[lane]);
        for (int j = 0; j < 32; ++j) out[j] = d * q[j] + m;
        break;
      }
      case Pack::kQ4F:
      case Pack::kQ8F: {
        const float* scales = block_scales_f32(g, b);
        const float m = has_offsets() ? block_offsets_f32(g, b)[lane] : 0.0f;
        for (int j = 0; j < 32; ++j) {
          const float d = pack_ == Pack::kQ8F ? scales[(j / 16) * kGroupRows + lane] : scales[lane];
          out[j] = has_offsets() ? d * q[j] + m : d * q[j];
        }
        break;
      }
      case Pack::kNone:
        break;
    }
  }
}

void CpuWeight::DequantizeGroup(int64_t g, float* dst) const {
  for (int r = 0; r < kGroupRows; ++r) {
    const int64_t row = g * kGroupRows + r;
    if (row < rows()) {
      DequantizeRow(row, dst + r * cols());
    } else {
      std::memset(dst + r * cols(), 0, cols() * sizeof(float));
    }
  }
}

}  // namespace kvshare::cpu
