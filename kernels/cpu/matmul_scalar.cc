// Plain C++ matmul for CPUs without AVX2: rows dequantized in 256-element pieces, fp32 dots.
#include <algorithm>

#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/quant.h"

namespace kvshare::cpu::scalar {

void DenseRows(const CpuWeight& w, const float* x, int t0, int t1, int64_t r0, int64_t r1,
               float* out) {
  const Tensor& tensor = w.tensor();
  const int64_t rows = w.rows(), cols = w.cols();
  const int block = GetDTypeInfo(tensor.type).block_elems;
  const size_t piece_bytes = StorageBytes(tensor.type, 256);
  float piece[256];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = tensor.row_data(r);
    for (int t = t0; t < t1; ++t) {
      const float* xt = x + t * cols;
      float sum = 0.0f;
      for (int64_t c = 0; c < cols; c += 256) {
        const int64_t len = std::min<int64_t>(256, cols - c);  // a multiple of the block size
        DequantizeRow(tensor.type, row + (c / 256) * piece_bytes, len / block * block, piece);
        for (int64_t i = 0; i < len; ++i) sum += piece[i] * xt[c + i];
      }
      out[t * rows + r] = sum;
    }
  }
}

}  // namespace kvshare::cpu::scalar
