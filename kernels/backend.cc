#include "kernels/backend.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvshare {

// The defaults of Backend's non-pure ops. This file is also compiled into the CUDA plugin
// (kernels/cuda/CMakeLists.txt), which links no other kvshare library: it holds Backend's
// vtable and typeinfo, so it must depend on nothing but the header.

void Backend::GeluMul(const float* gate, const float* up, int64_t count, float* out) {
  // gelu's tanh approximation in double, as cpu::ref::GeluMul computes it.
  constexpr double kSqrt2OverPi = 0.79788456080286535588;
  std::vector<float> g(count), u(count);
  CopyToHost(gate, count * 4, g.data());
  CopyToHost(up, count * 4, u.data());
  for (int64_t i = 0; i < count; ++i) {
    const double x = g[i];
    const double gelu = 0.5 * x * (1.0 + std::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x)));
    g[i] = static_cast<float>(gelu * u[i]);
  }
  CopyFromHost(g.data(), count * 4, out);
}

void Backend::MatMulSameInput(absl::Span<const PreparedWeight* const> ws, const float* x, int n,
                              absl::Span<float* const> outs) {
  for (size_t i = 0; i < ws.size(); ++i) MatMul(*ws[i], x, n, outs[i]);
}

void Backend::Scale(float* x, float s, int64_t count) {
  std::vector<float> h(count);
  CopyToHost(x, count * 4, h.data());
  for (float& v : h) v *= s;
  CopyFromHost(h.data(), count * 4, x);
}

void Backend::TargetNll(const float* logits, int rows, int vocab, const int32_t* targets,
                        double* nll) {
  std::vector<float> row(vocab);
  for (int r = 0; r < rows; ++r) {
    if (targets[r] < 0) {
      nll[r] = 0.0;
      continue;
    }
    CopyToHost(logits + size_t(r) * vocab, size_t(vocab) * sizeof(float), row.data());
    float max = row[0];
    for (float v : row) max = std::max(max, v);
    double sum = 0.0;
    for (float v : row) sum += std::exp(double(v) - double(max));
    nll[r] = double(max) + std::log(sum) - double(row[targets[r]]);
  }
}

void Backend::AddToRows(float* x, const float* row, int rows, int dim) {
  for (int r = 0; r < rows; ++r) Add(x + size_t(r) * dim, row, dim);
}

}  // namespace kvshare
