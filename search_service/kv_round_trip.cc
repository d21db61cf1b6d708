#include "search_service/kv_round_trip.h"

#include "kernels/cpu/kv_codec.h"

namespace kvshare {

void KvRoundTrip::Apply(int n, float* k, float* v) {
  if (g_.type == KvType::kF32 || n <= 0) return;
  const int blocks = (n + g_.block_tokens - 1) / g_.block_tokens;
  pool_.assign(size_t(blocks) * g_.block_floats(), 0.0f);
  tail_.assign(size_t(g_.tail_bytes() / 4) + 1, 0.0f);
  table_.resize(blocks);
  for (int b = 0; b < blocks; ++b) table_[b] = b;
  cpu::StoreKv(g_, pool_.data(), table_.data(), 0, n, k, v, tail_.data());
  const int64_t c = g_.kv_dim();
  for (int p = 0; p < n; ++p) {
    cpu::LoadKv(g_, pool_.data(), table_.data(), tail_.data(), n, p, k + p * c, v + p * c);
  }
}

}  // namespace kvshare
