#include "kernels/backend.h"

#include <vector>

#include "kernels/cpu/reference.h"

namespace kvshare {

void Backend::GeluMul(const float* gate, const float* up, int64_t count, float* out) {
  std::vector<float> g(count), u(count);
  CopyToHost(gate, count * 4, g.data());
  CopyToHost(up, count * 4, u.data());
  cpu::ref::GeluMul(g.data(), u.data(), count, g.data());
  CopyFromHost(g.data(), count * 4, out);
}

void Backend::Scale(float* x, float s, int64_t count) {
  std::vector<float> h(count);
  CopyToHost(x, count * 4, h.data());
  for (float& v : h) v *= s;
  CopyFromHost(h.data(), count * 4, x);
}

}  // namespace kvshare
