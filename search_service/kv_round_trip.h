// What a KV type does to K and V, for the strategy search (docs/METHOD.md §6): the values an
// attention kernel reads back from a paged pool of that type, computed on the host with the
// types' definitions (kernels/cpu/kv_codec.h), so that the search scores a lowered layer with
// exactly the numbers the serving pool will hold.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kv_type.h"

namespace kvshare {

// Replaces k and v ([n][kv_dim] each, positions 0 .. n-1 of one sequence, written in one step
// from position 0) by what a pool of geometry `g` returns for them: every full block of
// g.block_tokens positions as stored in its block, the last partial block of an int4 pool as
// its f16 tail. A no-op for kF32. Keeps scratch between calls; not thread-safe.
class KvRoundTrip {
 public:
  explicit KvRoundTrip(const KvGeometry& g) : g_(g) {}
  void Apply(int n, float* k, float* v);
  const KvGeometry& geometry() const { return g_; }

 private:
  KvGeometry g_;
  std::vector<float> pool_;  // ceil(n / block_tokens) blocks, block_floats() each
  std::vector<float> tail_;  // int4: g.tail_bytes()
  std::vector<int32_t> table_;
};

}  // namespace kvshare
