// How K and V are stored in the paged KV pool, and the exact byte layout of one block.
//
// A block holds `block_tokens` consecutive positions of one layer of one sequence
// (C = n_kv_heads * head_dim channels per position, H = n_kv_heads, T = block_tokens):
//   f32   K f32[T][C], V f32[T][C]
//   f16   K f16[T][C], V f16[T][C]                            (IEEE half, round to nearest)
//   int8  K i8[T][C], V i8[T][C], K scale f16[T][H], V scale f16[T][H]
//         symmetric per (position, KV head): x = q * scale, scale = max|x| / 127
//   int4  K u4[T][C], V u4[T][C], K scale f16[C], K min f16[C],
//         V scale f16[T][C/32], V min f16[T][C/32]
//         asymmetric (KIVI): x = q * scale + min, q in [0, 15]; K per channel over the block's
//         T positions, V per position over groups of 32 channels. Within each 32 channels of
//         a row, byte j holds channel j in its low nibble and channel j + 16 in its high one.
//   k4v3  K u4[T][C], V u3[T][C], K scale f16[C], K min f16[C], V scale f16[T][C/64],
//         V min f16[T][C/64]
//         K as int4's; V asymmetric per position over groups of 64 channels, q in [0, 7].
//         Each 64 channels of a row take 24 bytes: 16 bytes of low bits (byte j holds bits 0-1
//         of channels j, j + 16, j + 32, j + 48 in its bit pairs 0-1, 2-3, 4-5, 6-7), then 8
//         bytes of high bits (byte j holds bit 2 of channel j + 8 i in its bit i). 0.25 of
//         f16's bytes at 64-token blocks (int4: 0.297); V tolerates 3 bits where K does not
//         (docs/METHOD.md §6).
//   int4a K codes (T/8 bytes per bit plane, channel after channel), K widths u4[C],
//         K scale f16[C], K min f16[C], V u4[T][C], V scale f16[T][C/32], V min f16[T][C/32]
//         V as int4's. K per channel over the block's T positions like int4's, but with b_c
//         bits for channel c, chosen when the block fills: each head's 4 x head_dim bits go, one
//         at a time, to the channel whose expected cost w_c r_c^2 4^-b_c falls most (r_c: its
//         range over the block; w_c: the layer's query weight of the channel, KvGeometry::
//         k_weights; at most 8 bits, ties to the lower channel). q in [0, 2^b_c - 1], x = q *
//         scale + min; a channel of 0 bits stores scale 0 and min = the midpoint of its range.
//         Channel c's codes are b_c planes of T bits (plane j: bit j of each position's code,
//         position t at bit t % 8 of byte t / 8), after the planes of channels 0 .. c-1; widths
//         two to a byte, channel 2i low. Attention reads K only through q . k, so a channel's
//         rounding costs in proportion to E[q_c^2]: on SmolLM2 at 64-token blocks int4a costs
//         +0.0068 nats against int4's +0.0116, at 0.299 of f16's bytes (docs/METHOD.md §6).
// An int4, int4a or k4v3 layer keeps two f16 blocks (slots, each K f16[T][C] then V f16[T][C]) per
// sequence outside the pool, its *tail*: slot 0 holds block 0 for good (the attention sink: the
// first positions draw attention out of proportion to their number, and their K values stretch the
// per-channel ranges of the block they share; on SmolLM2 with 64-token blocks keeping it f16 takes
// int4's NLL cost from +0.0179 to +0.0116 nats, docs/METHOD.md §6), slot 1 the partial block. A
// later block is quantised from slot 1 when it fills; until then, and for block 0 always, the
// block in the pool is untouched. Every other type writes each position into its block directly.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvshare {

enum class KvType : uint8_t { kF32 = 0, kF16 = 1, kInt8 = 2, kInt4 = 3, kK4V3 = 4, kInt4A = 5 };
constexpr int kKvTypeCount = 6;
constexpr KvType kAllKvTypes[kKvTypeCount] = {KvType::kF32,  KvType::kF16,  KvType::kInt8,
                                              KvType::kInt4, KvType::kK4V3, KvType::kInt4A};

// "f32", "f16", "int8", "int4", "k4v3", "int4a".
const char* KvTypeName(KvType type);
// The inverse of KvTypeName; InvalidArgument naming the accepted values otherwise.
absl::StatusOr<KvType> ParseKvType(absl::string_view name);

// int4 V groups (channels per scale) and the unit of the nibble packing.
constexpr int kKvInt4Group = 32;
// k4v3 V groups (channels per scale) and the unit of its 3-bit packing.
constexpr int kKvV3Group = 64;
constexpr int kKvV3GroupBytes = kKvV3Group * 3 / 8;

// int4a: the most bits one K channel takes, and the average per channel.
constexpr int kKvInt4AMaxBits = 8;
constexpr int kKvInt4AMeanBits = 4;

// Whether a type quantises a block when it fills and keeps block 0 and the partial block in an
// f16 tail (int4, k4v3, int4a).
constexpr bool KvTypeHasTail(KvType t) {
  return t == KvType::kInt4 || t == KvType::kK4V3 || t == KvType::kInt4A;
}

// Geometry of the paged KV pool for one layer (or for all, when the type is uniform).
// Block b starts at pool + b * block_bytes().
struct KvGeometry {
  int block_tokens = 16;
  int n_kv_heads = 0;
  int head_dim = 0;
  KvType type = KvType::kF32;
  // int4a: the layer's query weight of each K channel (kv_dim floats: the mean of q_c^2 summed
  // over the query heads reading the channel's KV head; common/engine/query_weights.h), which
  // the bit allocation weighs rounding by. Not owned. Null weighs every channel 1 (only
  // meaningful for tests of the layout: serving always passes the model's).
  const float* k_weights = nullptr;

  int64_t kv_dim() const { return static_cast<int64_t>(n_kv_heads) * head_dim; }
  // Exact bytes of one block (layouts above).
  int64_t block_bytes() const;
  // block_bytes() / 4: every layout is a whole number of floats.
  int64_t block_floats() const { return block_bytes() / 4; }
  // Bytes of the f16 tail an int4, int4a or k4v3 layer keeps per sequence (two slots); 0 for the
  // others.
  int64_t tail_bytes() const { return KvTypeHasTail(type) ? 8LL * block_tokens * kv_dim() : 0; }
};

// Whether a pool of type g.type can hold this geometry: int4 needs head_dim % 32 == 0 (its
// groups and nibble packing are 32 channels of one head), k4v3 head_dim % 64 == 0, int4a
// head_dim % 32 == 0 and block_tokens % 8 == 0 (its bit planes are whole bytes).
// InvalidArgument naming the field.
absl::Status ValidateKvGeometry(const KvGeometry& g);

}  // namespace kvshare
