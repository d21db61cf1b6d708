#include "kernels/kv_type.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace kvshare {

const char* KvTypeName(KvType type) {
  switch (type) {
    case KvType::kF32:
      return "f32";
    case KvType::kF16:
      return "f16";
    case KvType::kInt8:
      return "int8";
    case KvType::kInt4:
      return "int4";
    case KvType::kK4V3:
      return "k4v3";
    case KvType::kInt4A:
      return "int4a";
  }
  return "?";
}

absl::StatusOr<KvType> ParseKvType(absl::string_view name) {
  for (KvType t : kAllKvTypes) {
    if (name == KvTypeName(t)) return t;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "kv type \"%s\" is not one of f32, f16, int8, int4, k4v3, int4a", name.substr(0, 32)));
}

int64_t KvGeometry::block_bytes() const {
  const int64_t t = block_tokens, c = kv_dim();
  switch (type) {
    case KvType::kF32:
      return 2 * t * c * 4;
    case KvType::kF16:
      return 2 * t * c * 2;
    case KvType::kInt8:
      return 2 * t * c + 2 * t * n_kv_heads * 2;
    case KvType::kInt4:
      // Nibbles of K and V, per-channel K scale and min, per (position, 32 channels) V's.
      return t * c + 2 * c * 2 + 2 * t * (c / kKvInt4Group) * 2;
    case KvType::kK4V3:
      // K as int4; 3-bit V, V scale and min per (position, 64 channels).
      return t * c / 2 + 2 * c * 2 + t * (c / kKvV3Group) * (kKvV3GroupBytes + 2 * 2);
    case KvType::kInt4A:
      // int4's bytes and each K channel's width in a nibble.
      return t * c + c / 2 + 2 * c * 2 + 2 * t * (c / kKvInt4Group) * 2;
  }
  return 0;
}

absl::Status ValidateKvGeometry(const KvGeometry& g) {
  if (g.block_tokens < 1 || g.n_kv_heads < 1 || g.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV geometry: block_tokens %d, n_kv_heads %d, head_dim %d must be >= 1",
                        g.block_tokens, g.n_kv_heads, g.head_dim));
  }
  if (g.type == KvType::kInt4 && g.head_dim % kKvInt4Group != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv type int4 needs head_dim a multiple of %d (its groups are 32 channels of one head); "
        "this model's head_dim is %d",
        kKvInt4Group, g.head_dim));
  }
  if (g.type == KvType::kInt4A && (g.head_dim % kKvInt4Group != 0 || g.block_tokens % 8 != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv type int4a needs head_dim a multiple of %d and block_tokens a multiple of 8 (its V "
        "groups are 32 channels of one head, its K bit planes whole bytes); this model's "
        "head_dim is %d, block_tokens %d",
        kKvInt4Group, g.head_dim, g.block_tokens));
  }
  if (g.type == KvType::kK4V3 && g.head_dim % kKvV3Group != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv type k4v3 needs head_dim a multiple of %d (its V groups are 64 channels of one "
        "head); this model's head_dim is %d",
        kKvV3Group, g.head_dim));
  }
  return absl::OkStatus();
}

}  // namespace kvshare
