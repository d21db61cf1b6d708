#include "kernels/cpu/reference.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/quant.h"

namespace kvshare::cpu::ref {

void MatMul(const Tensor& w, const float* x, int n, float* out, float* abs_out) {
  const int64_t rows = w.rows(), cols = w.cols();
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(w.type, w.row_data(r), cols, row.data());
    for (int t = 0; t < n; ++t) {
      double sum = 0.0, abs_sum = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = static_cast<double>(x[t * cols + c]) * row[c];
        sum += p;
        abs_sum += std::fabs(p);
      }
      out[t * rows + r] = static_cast<float>(sum);
      if (abs_out != nullptr) abs_out[t * rows + r] = static_cast<float>(abs_sum);
    }
  }
}

void MatMulQ8Activations(const Tensor& w, const float* x, int n, float* out, bool two_digits) {
  const int64_t rows = w.rows(), cols = w.cols(), nb = cols / 32;
  std::vector<int8_t> xq(n * cols), xq2(n * cols);
  std::vector<float> xs(n * nb), xsum(n * nb);
  std::vector<int32_t> xqsum(n * nb), xq2sum(n * nb);
  for (int t = 0; t < n; ++t) {
    QuantizeActivationsRef(x + t * cols, cols,
                           {&xq[t * cols], &xs[t * nb], &xsum[t * nb], &xqsum[t * nb],
                            two_digits ? &xq2[t * cols] : nullptr, &xq2sum[t * nb]});
  }
  // x[c] in steps of its block's scale: the first digit, plus the second one's 1/256 steps.
  auto steps = [&](int64_t i) {
    return xq[i] + (two_digits ? xq2[i] / static_cast<double>(kSecondDigitBase) : 0.0);
  };
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* wr = w.row_data(r);
    for (int t = 0; t < n; ++t) {
      double sum = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t x0 = t * cols + b * 32;
        double dot = 0.0;
        double d, m = 0.0;
        if (HasBlock32Form(w.type)) {
          // Per-16 scales: the two halves' dots are scaled apart.
          Block32 blk;
          DecodeBlock32(w.type, wr, b, &blk);
          double half[2] = {0.0, 0.0};
          for (int j = 0; j < 32; ++j) half[j / 16] += blk.q[j] * steps(x0 + j);
          sum += xs[t * nb + b] * (static_cast<double>(blk.scale[0]) * half[0] +
                                   static_cast<double>(blk.scale[1]) * half[1]) +
                 static_cast<double>(blk.offset) * xsum[t * nb + b];
          continue;
        }
        if (w.type == DType::kQ8_0) {
          const BlockQ8_0& blk = reinterpret_cast<const BlockQ8_0*>(wr)[b];
          for (int j = 0; j < 32; ++j) dot += blk.qs[j] * steps(x0 + j);
          d = Fp16ToFp32(blk.d);
        } else if (w.type == DType::kQ4_0) {
          const BlockQ4_0& blk = reinterpret_cast<const BlockQ4_0*>(wr)[b];
          for (int j = 0; j < 16; ++j) {
            dot += ((blk.qs[j] & 15) - 8) * steps(x0 + j) +
                   ((blk.qs[j] >> 4) - 8) * steps(x0 + j + 16);
          }
          d = Fp16ToFp32(blk.d);
        } else {  // Q4_1
          const BlockQ4_1& blk = reinterpret_cast<const BlockQ4_1*>(wr)[b];
          for (int j = 0; j < 16; ++j) {
            dot += (blk.qs[j] & 15) * steps(x0 + j) + (blk.qs[j] >> 4) * steps(x0 + j + 16);
          }
          d = Fp16ToFp32(blk.d);
          m = Fp16ToFp32(blk.m);
        }
        sum += d * xs[t * nb + b] * dot + m * xsum[t * nb + b];
      }
      out[t * rows + r] = static_cast<float>(sum);
    }
  }
}

void Embed(const Tensor& table, const int32_t* ids, int n, float* out) {
  const int64_t cols = table.cols();
  for (int t = 0; t < n; ++t)
    DequantizeRow(table.type, table.row_data(ids[t]), cols, out + t * cols);
}

void RmsNorm(const float* x, const float* weight, int n, int dim, float eps, float* out) {
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<int64_t>(t) * dim;
    float* ot = out + static_cast<int64_t>(t) * dim;
    double ss = 0.0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(xt[i]) * xt[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    for (int i = 0; i < dim; ++i) ot[i] = weight[i] * (inv * xt[i]);
  }
}

void Rope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, float theta) {
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
      for (int i = 0; i < head_dim; i += 2) {
        const float freq = 1.0f / powf(theta, i / static_cast<float>(head_dim));
        const float val = pos[t] * freq;
        const float fcr = cosf(val), fci = sinf(val);
        const float v0 = v[i], v1 = v[i + 1];
        v[i] = v0 * fcr - v1 * fci;
        v[i + 1] = v0 * fci + v1 * fcr;
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void GeluMul(const float* gate, const float* up, int64_t count, float* out) {
  const double kSqrt2OverPi = 0.79788456080286535588;
  for (int64_t i = 0; i < count; ++i) {
    const double g = gate[i];
    const double gelu = 0.5 * g * (1.0 + std::tanh(kSqrt2OverPi * (g + 0.044715 * g * g * g)));
    out[i] = static_cast<float>(gelu * up[i]);
  }
}

void Add(float* x, const float* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void WriteKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
             const float* k, const float* v, void* tail) {
  StoreKv(g, pool, block_table, start_pos, n, k, v, tail);
}

void AttentionContiguous(const float* k, const float* v, int n_kv_heads, int head_dim,
                         const float* q, int n_q, int start_pos, int n_heads, float* out,
                         int window) {
  const int group = n_heads / n_kv_heads;
  const int64_t kv_dim = static_cast<int64_t>(n_kv_heads) * head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> s;
  for (int j = 0; j < n_q; ++j) {
    const int len = start_pos + j + 1;
    const int lo = window > 0 ? std::max(0, len - window) : 0;
    s.resize(len);
    for (int h = 0; h < n_heads; ++h) {
      const int kvh = h / group;
      const float* qh = q + (static_cast<int64_t>(j) * n_heads + h) * head_dim;
      double max = -INFINITY;
      for (int p = lo; p < len; ++p) {
        const float* kp = k + p * kv_dim + kvh * head_dim;
        double dot = 0.0;
        for (int i = 0; i < head_dim; ++i) dot += static_cast<double>(qh[i]) * kp[i];
        s[p] = dot * scale;
        max = std::fmax(max, s[p]);
      }
      double denom = 0.0;
      for (int p = lo; p < len; ++p) {
        s[p] = std::exp(s[p] - max);
        denom += s[p];
      }
      float* oh = out + (static_cast<int64_t>(j) * n_heads + h) * head_dim;
      for (int i = 0; i < head_dim; ++i) {
        double acc = 0.0;
        for (int p = lo; p < len; ++p) acc += s[p] * v[p * kv_dim + kvh * head_dim + i];
        oh[i] = static_cast<float>(acc / denom);
      }
    }
  }
}

void Attention(const KvGeometry& g, const void* pool, const AttentionSeq* seqs, int n_seqs,
               const float* q, int n_heads, float* out) {
  const int64_t kv_dim = static_cast<int64_t>(g.n_kv_heads) * g.head_dim;
  const int64_t q_dim = static_cast<int64_t>(n_heads) * g.head_dim;
  for (int s = 0; s < n_seqs; ++s) {
    const AttentionSeq& seq = seqs[s];
    const int ctx = seq.start_pos + seq.n_q;
    std::vector<float> k(ctx * kv_dim), v(ctx * kv_dim);
    for (int p = 0; p < ctx; ++p) {
      LoadKv(g, pool, seq.block_table, seq.tail, ctx, p, &k[p * kv_dim], &v[p * kv_dim]);
    }
    AttentionContiguous(k.data(), v.data(), g.n_kv_heads, g.head_dim, q + seq.q_row * q_dim,
                        seq.n_q, seq.start_pos, n_heads, out + seq.q_row * q_dim, seq.window);
  }
}

}  // namespace kvshare::cpu::ref
