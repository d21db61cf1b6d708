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

bool IsQuantized(DType t) { return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_1; }

}  // namespace

absl::StatusOr<std::unique_ptr<CpuWeight>> CpuWeight::Create(const Tensor& w, bool repack) {
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
  if (!repack || !IsQuantized(w.type)) return cw;

  const int64_t nb = w.cols() / 32;
  const bool q8 = w.type == DType::kQ8_0;
  cw->quant_bytes_ = q8 ? 512 : 256;
  cw->unit_bytes_ = 2 * cw->quant_bytes_ + (w.type == DType::kQ4_1 ? 128 : 64);
  cw->group_bytes_ = (nb + 1) / 2 * cw->unit_bytes_;
  cw->n_groups_ = (w.rows() + kGroupRows - 1) / kGroupRows;
  cw->packed_ = AllocateAligned(cw->group_bytes_ * cw->n_groups_);
  if (cw->packed_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat("weight '%s': cannot allocate %d bytes",
                                                        w.name, cw->group_bytes_ * cw->n_groups_));
  }
  const int chunks = cw->quant_bytes_ / 64;
  for (int64_t g = 0; g < cw->n_groups_; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* quants = const_cast<uint8_t*>(cw->block_quants(g, b));
      uint16_t* scales = const_cast<uint16_t*>(cw->block_scales(g, b));
      uint16_t* offsets = const_cast<uint16_t*>(cw->block_offsets(g, b));
      for (int r = 0; r < kGroupRows; ++r) {
        const int64_t row = g * kGroupRows + r;
        if (row >= w.rows()) break;  // padding rows stay zero
        uint8_t* dst = quants + r * 4;
        if (q8) {
          const BlockQ8_0& blk = reinterpret_cast<const BlockQ8_0*>(w.row_data(row))[b];
          for (int k = 0; k < chunks; ++k) {
            for (int e = 0; e < 4; ++e) {
              dst[k * 64 + e] = static_cast<uint8_t>(blk.qs[4 * k + e]) ^ 0x80;
            }
          }
          scales[r] = blk.d;
        } else {
          const uint8_t* qs;
          if (w.type == DType::kQ4_0) {
            const BlockQ4_0& blk = reinterpret_cast<const BlockQ4_0*>(w.row_data(row))[b];
            qs = blk.qs;
            scales[r] = blk.d;
          } else {
            const BlockQ4_1& blk = reinterpret_cast<const BlockQ4_1*>(w.row_data(row))[b];
            qs = blk.qs;
            scales[r] = blk.d;
            offsets[r] = blk.m;
          }
          for (int k = 0; k < chunks; ++k) {
            for (int e = 0; e < 4; ++e) dst[k * 64 + e] = qs[4 * k + e];
          }
        }
      }
      if (q8) {
        // Padding rows: q = 0 is stored as 128 (their d is 0 anyway).
        for (int r = static_cast<int>(std::max<int64_t>(0, w.rows() - g * kGroupRows));
             r < kGroupRows; ++r) {
          for (int k = 0; k < chunks; ++k) {
            for (int e = 0; e < 4; ++e) quants[k * 64 + r * 4 + e] = 0x80;
          }
        }
      }
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
  for (int64_t b = 0; b < blocks(); ++b) {
    const uint8_t* src = block_quants(g, b) + lane * 4;
    const uint16_t* scales = block_scales(g, b);
    const uint16_t* offsets = block_offsets(g, b);
    const float d = Fp16ToFp32(scales[lane]);
    float* out = dst + b * 32;
    switch (tensor_.type) {
      case DType::kQ8_0:
        for (int k = 0; k < 8; ++k) {
          for (int e = 0; e < 4; ++e) {
            out[4 * k + e] = d * static_cast<int8_t>(src[k * 64 + e] ^ 0x80);
          }
        }
        break;
      case DType::kQ4_0:
      case DType::kQ4_1: {
        const bool q41 = tensor_.type == DType::kQ4_1;
        const float m = q41 ? Fp16ToFp32(offsets[lane]) : 0.0f;
        for (int k = 0; k < 4; ++k) {
          for (int e = 0; e < 4; ++e) {
            const uint8_t byte = src[k * 64 + e];
            if (q41) {
              out[4 * k + e] = d * (byte & 0x0f) + m;
              out[4 * k + e + 16] = d * (byte >> 4) + m;
            } else {
              out[4 * k + e] = d * ((byte & 0x0f) - 8);
              out[4 * k + e + 16] = d * ((byte >> 4) - 8);
            }
          }
        }
        break;
      }
      default:
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
