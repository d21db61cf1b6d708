// Storing K/V rows into a block of each KV type and reading them back, in plain scalar C++
// (layouts: kernels/kv_type.h). These are the definitions of the types: WriteKv of the CPU
// backend stores through StoreKv, the reference attention reads through LoadKv, and the SIMD
// attention kernels (kv_chunk.h) are tested against it.
#pragma once

#include <cstdint>

#include "kernels/kv_type.h"

namespace kvshare::cpu {

// Byte offsets of a block's parts (T = block_tokens, C = kv_dim, H = n_kv_heads).
struct KvBlockLayout {
  int64_t k, v;              // K and V payloads (f32/f16/int8/int4 rows)
  int64_t k_scale, v_scale;  // int8: f16[T][H]; int4: K f16[C], V f16[T][C/32] (k4v3: C/64)
  int64_t k_min, v_min;      // int4, k4v3: K f16[C], V f16[T][C/32] (k4v3: C/64)
  int64_t k_bits;            // int4a: K widths u4[C] (the K codes' planes start at k)
  explicit KvBlockLayout(const KvGeometry& g);
};

// Stores positions start_pos..start_pos+n-1 (k, v: [n][kv_dim]) as g.type; see
// Backend::WriteKv for the contract (int4 and k4v3 go through `tail`: kv_type.h).
void StoreKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
             const float* k, const float* v, void* tail);

// k, v[kv_dim] = position p's K and V as stored, of a sequence with `stored` positions.
void LoadKv(const KvGeometry& g, const void* pool, const int32_t* block_table, const void* tail,
            int stored, int p, float* k, float* v);

// int4, k4v3: the tail slot (K f16[T][C], V f16[T][C]) holding block b of a sequence with
// `stored` positions, or nullptr when block b is quantised in the pool: slot 0 for block 0 (the
// attention sink, never quantised), slot 1 for the partial block.
inline const uint16_t* TailSlot(const KvGeometry& g, const void* tail, int stored, int b) {
  const auto* slots = static_cast<const uint16_t*>(tail);
  if (b == 0) return slots;
  if (b < stored / g.block_tokens) return nullptr;
  return slots + 2LL * g.block_tokens * g.kv_dim();
}

// One int4 row of 32-channel groups: q[c] in [0, 15] packed two to a byte (byte j of a group
// holds channel j low, j + 16 high). n % 32 == 0.
void PackNibbles(const uint8_t* q, int n, uint8_t* packed);

// The int8 quantiser of one (position, KV head) row: scale_f16 = fp16(max|x| / 127),
// q = clamp(round_half_even(x / scale), -127, 127) with the fp16-rounded scale (0 when it is 0).
void QuantizeInt8(const float* x, int n, int8_t* q, uint16_t* scale_f16);

// One k4v3 V group of 64 channels: q[c] in [0, 7] packed into 24 bytes (kv_type.h).
void Pack3Bits(const uint8_t* q, uint8_t* packed);
// Channel c's code (c < 64) of a group packed by Pack3Bits.
inline int Unpack3Bits(const uint8_t* packed, int c) {
  return ((packed[c % 16] >> (2 * (c / 16))) & 3) | (((packed[16 + c % 8] >> (c / 8)) & 1) << 2);
}
// All 64 codes of a group packed by Pack3Bits, plane by plane (loops the compiler vectorises:
// channel 16 s + j's bits 0-1 are in byte j at bit 2 s, channel 8 i + j's bit 2 in byte 16 + j
// at bit i).
inline void Unpack3BitGroup(const uint8_t* packed, uint8_t* q) {
  for (int s = 0; s < 4; ++s) {
    for (int j = 0; j < 16; ++j) q[16 * s + j] = (packed[j] >> (2 * s)) & 3;
  }
  for (int i = 0; i < 8; ++i) {
    for (int j = 0; j < 8; ++j) q[8 * i + j] |= ((packed[16 + j] >> i) & 1) << 2;
  }
}

// int4a's allocation of one head's K bits (kv_type.h): cost[ch] = w_ch * r_ch^2 for its
// head_dim channels; kKvInt4AMeanBits * head_dim bits given one at a time to the channel of
// the largest cost (each bit quarters it; at most kKvInt4AMaxBits; ties to the lower channel).
void AllocateKBits(const double* cost, int head_dim, uint8_t* bits);

// int4a: bit r of a plane of T-bit rows (r < T).
inline int PlaneBit(const uint8_t* plane, int r) { return (plane[r >> 3] >> (r & 7)) & 1; }

// The asymmetric quantiser of n values x[i * stride] to codes [0, max_code] (int4: 15, k4v3's
// V: 7): min_f16 = fp16(min), scale_f16 = fp16((max - min) / max_code),
// q = clamp(round_half_even((x - min) / scale), 0, max_code) with the fp16-rounded scale and
// min (0 when the scale is 0).
void QuantizeAsymmetric(const float* x, int n, int64_t stride, int max_code, uint8_t* q,
                        int64_t q_stride, uint16_t* scale_f16, uint16_t* min_f16);

}  // namespace kvshare::cpu
