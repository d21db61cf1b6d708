// The KV types' storage (kernels/kv_type.h, kernels/cpu/kv_codec.h) against values worked out
// by hand (and with Python's struct 'e' half-precision codec): block sizes, fp16 rounding, the
// int8 scale and codes, the int4 KIVI block (per-channel K, per-32-channel V, nibble order),
// and the int4 tail: block 0 stays f16 in the tail, a later block until its last position
// arrives; int4a's block against numpy (tests/reference/int4a_block_reference.py).
#include "kernels/cpu/kv_codec.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/reference.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

TEST(KvCodecTest, BlockBytesPerTypeForSmolLm2) {
  // SmolLM2-135M: 3 KV heads of 64 channels, 16-token blocks.
  KvGeometry g{16, 3, 64, KvType::kF32};
  EXPECT_EQ(g.block_bytes(), 2 * 16 * 192 * 4);  // 24576
  g.type = KvType::kF16;
  EXPECT_EQ(g.block_bytes(), 12288);
  g.type = KvType::kInt8;
  EXPECT_EQ(g.block_bytes(), 6144 + 2 * 16 * 3 * 2);  // codes + f16 scale per (token, head)
  g.type = KvType::kInt4;
  // nibbles 2 * 16 * 96, K scale+min per channel 4 * 192, V scale+min per (token, 32 ch) 4*16*6
  EXPECT_EQ(g.block_bytes(), 3072 + 768 + 384);
  EXPECT_EQ(g.tail_bytes(), 2 * 12288);  // two f16 blocks: block 0 and the partial block
  // Per token over 30 layers: 7920 bytes, 0.344 of llama.cpp's f16 23040.
  EXPECT_EQ(g.block_bytes() * 30 / 16, 7920);
  g.type = KvType::kK4V3;
  // K as int4 (nibbles 16 * 96, scale+min 4 * 192); V 3 bits: 24 bytes per (token, 64 ch)
  // 16 * 3 * 24, scale+min 4 * 16 * 3.
  EXPECT_EQ(g.block_bytes(), 1536 + 768 + 1152 + 192);
  EXPECT_EQ(g.tail_bytes(), 2 * 12288);
  // 64-token blocks: 5760 bytes per token over 30 layers, 0.25 of f16 (int4: 0.297).
  g.block_tokens = 64;
  EXPECT_EQ(g.block_bytes() * 30 / 64, 5760);
  g.type = KvType::kInt4A;
  // int4's bytes (K codes 64 * 96 as bit planes, V 64 * 96, K scale+min 4 * 192, V scale+min
  // 4 * 64 * 6) and K widths 96: 6885 bytes per token over 30 layers, 0.299 of f16.
  EXPECT_EQ(g.block_bytes(), 6144 + 6144 + 768 + 1536 + 96);
  EXPECT_EQ(g.block_bytes() * 30 / 64, 6885);
}

TEST(KvCodecTest, ParseKvTypeNamesTheAcceptedValues) {
  EXPECT_EQ(*ParseKvType("int4"), KvType::kInt4);
  auto bad = ParseKvType("q4_0");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("f32, f16, int8, int4"), std::string::npos);
  EXPECT_FALSE(ValidateKvGeometry({16, 4, 8, KvType::kInt4}).ok());  // head_dim 8
  EXPECT_TRUE(ValidateKvGeometry({16, 4, 8, KvType::kInt8}).ok());
  EXPECT_EQ(*ParseKvType("k4v3"), KvType::kK4V3);
  EXPECT_FALSE(ValidateKvGeometry({16, 4, 32, KvType::kK4V3}).ok());  // V groups of 64
  EXPECT_TRUE(ValidateKvGeometry({16, 4, 64, KvType::kK4V3}).ok());
}

TEST(KvCodecTest, F16RoundsToNearest) {
  const KvGeometry g{2, 1, 8, KvType::kF16};
  std::vector<float> pool(g.block_floats(), NAN), k(8, 1.0f / 3), v(8, -2.0f), ko(8), vo(8);
  const int32_t table[] = {0};
  cpu::ref::WriteKv(g, pool.data(), table, 0, 1, k.data(), v.data());
  cpu::LoadKv(g, pool.data(), table, nullptr, 1, 0, ko.data(), vo.data());
  EXPECT_EQ(ko[3], 0.333251953125f);
  EXPECT_EQ(vo[7], -2.0f);
}

TEST(KvCodecTest, Int8IsSymmetricPerTokenAndHeadWithAnF16Scale) {
  const KvGeometry g{2, 1, 8, KvType::kInt8};
  const std::vector<float> x = {1.27f, -0.635f, 0.3f, 0.001f, -1.0f, 0.5f, 0.25f, 0.125f};
  std::vector<float> neg(8), pool(g.block_floats(), NAN), ko(8), vo(8);
  for (int i = 0; i < 8; ++i) neg[i] = -x[i];
  const int32_t table[] = {0};
  cpu::ref::WriteKv(g, pool.data(), table, 0, 1, x.data(), neg.data());
  const auto* bytes = reinterpret_cast<const uint8_t*>(pool.data());
  const cpu::KvBlockLayout lay(g);
  uint16_t scale;
  std::memcpy(&scale, bytes + lay.k_scale, 2);
  EXPECT_EQ(scale, 0x211f);  // fp16(1.27 / 127) = 0.01000213623046875
  const int8_t want_q[] = {127, -63, 30, 0, -100, 50, 25, 12};
  EXPECT_EQ(0, std::memcmp(bytes + lay.k, want_q, 8));
  cpu::LoadKv(g, pool.data(), table, nullptr, 1, 0, ko.data(), vo.data());
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(ko[i], want_q[i] * 0.01000213623046875f) << i;
    EXPECT_EQ(vo[i], -ko[i]) << i;
  }
}

TEST(KvCodecTest, Int4QuantisesALaterBlockWhenItFillsBlockZeroStaysF16) {
  const KvGeometry g{4, 1, 32, KvType::kInt4};
  // Block 1 (positions 4-7) holds K[t][c] = 5 t (c % 4 + 1): per channel min 0, scale
  // (c % 4 + 1), codes 5 t — exact; V[t][c] = 0.1 c - 1 for every t: min -1, scale
  // fp16(3.1 / 15) = 0.2066650390625. Block 0 (positions 0-3) holds the same rows.
  std::vector<float> k(8 * 32), v(8 * 32);
  for (int p = 0; p < 8; ++p) {
    for (int c = 0; c < 32; ++c) {
      k[p * 32 + c] = 5.0f * (p % 4) * (c % 4 + 1) + (p < 4 ? 0.01f : 0.0f);  // 0.01: not f16
      v[p * 32 + c] = static_cast<float>(c) * 0.1f - 1.0f;
    }
  }
  const auto f16 = [](float x) { return cpu::Fp16ToFp32(cpu::Fp32ToFp16(x)); };
  std::vector<float> pool(3 * g.block_floats(), NAN), tail(g.tail_bytes() / 4, NAN);
  const int32_t table[] = {2, 1};  // the sequence's blocks 0 and 1
  std::vector<float> ko(32), vo(32);
  // Block 0 full, and three positions of block 1: the pool is untouched (NaN bytes), every
  // read comes from the tail in f16.
  cpu::ref::WriteKv(g, pool.data(), table, 0, 7, k.data(), v.data(), tail.data());
  for (size_t i = 0; i < pool.size(); ++i) ASSERT_TRUE(std::isnan(pool[i])) << i;
  cpu::LoadKv(g, pool.data(), table, tail.data(), 7, 1, ko.data(), vo.data());
  EXPECT_EQ(ko[5], f16(k[32 + 5]));
  cpu::LoadKv(g, pool.data(), table, tail.data(), 7, 6, ko.data(), vo.data());
  EXPECT_EQ(vo[3], f16(v[6 * 32 + 3]));
  EXPECT_EQ(ko[5], 20.0f);

  // The last position of block 1 quantises it into pool block 1; pool block 2 (the sequence's
  // block 0) stays untouched and block 0 still reads f16.
  cpu::ref::WriteKv(g, pool.data(), table, 7, 1, k.data() + 7 * 32, v.data() + 7 * 32, tail.data());
  for (int64_t i = 0; i < g.block_floats(); ++i) ASSERT_TRUE(std::isnan(pool[i])) << i;
  for (int64_t i = 2 * g.block_floats(); i < 3 * g.block_floats(); ++i) {
    ASSERT_TRUE(std::isnan(pool[i])) << i;
  }
  const auto* block = reinterpret_cast<const uint8_t*>(pool.data()) + g.block_bytes();
  const cpu::KvBlockLayout lay(g);
  // V codes round((0.1 c) / 0.20666): 0 0 1 1 2 2 ... 15 15; byte j = code j | code (j+16) << 4.
  EXPECT_EQ(block[lay.v + 0], 0x80);
  EXPECT_EQ(block[lay.v + 2], 0x91);
  EXPECT_EQ(block[lay.v + 15], 0xf7);
  for (int p = 0; p < 8; ++p) {
    cpu::LoadKv(g, pool.data(), table, tail.data(), 8, p, ko.data(), vo.data());
    for (int c = 0; c < 32; ++c) {
      if (p < 4) {
        ASSERT_EQ(ko[c], f16(k[p * 32 + c])) << p << " " << c;
        ASSERT_EQ(vo[c], f16(v[p * 32 + c])) << p << " " << c;
        continue;
      }
      ASSERT_EQ(ko[c], k[p * 32 + c]) << p << " " << c;
      const int code = c / 2;
      ASSERT_EQ(vo[c], code * 0.2066650390625f - 1.0f) << p << " " << c;
    }
  }
}

TEST(KvCodecTest, K4V3StoresKAsInt4AndVInThreeBitsPer64Channels) {
  const KvGeometry g{4, 1, 64, KvType::kK4V3};
  // Block 1 (positions 4-7): K[t][c] = 5 t (c % 4 + 1), exact in int4 as in the int4 test;
  // V[t][c] = 0.1 c - 1 for every t: min -1, scale fp16(6.3 / 7) = 0.89990234375 (0x3b33).
  std::vector<float> k(8 * 64), v(8 * 64);
  for (int p = 0; p < 8; ++p) {
    for (int c = 0; c < 64; ++c) {
      k[p * 64 + c] = 5.0f * (p % 4) * (c % 4 + 1);
      v[p * 64 + c] = static_cast<float>(c) * 0.1f - 1.0f;
    }
  }
  const auto f16 = [](float x) { return cpu::Fp16ToFp32(cpu::Fp32ToFp16(x)); };
  std::vector<float> pool(2 * g.block_floats(), NAN), tail(g.tail_bytes() / 4, NAN);
  const int32_t table[] = {1, 0};
  std::vector<float> ko(64), vo(64);
  cpu::ref::WriteKv(g, pool.data(), table, 0, 7, k.data(), v.data(), tail.data());
  for (size_t i = 0; i < pool.size(); ++i) ASSERT_TRUE(std::isnan(pool[i])) << i;
  cpu::LoadKv(g, pool.data(), table, tail.data(), 7, 6, ko.data(), vo.data());
  EXPECT_EQ(vo[33], f16(v[6 * 64 + 33]));
  cpu::ref::WriteKv(g, pool.data(), table, 7, 1, k.data() + 7 * 64, v.data() + 7 * 64, tail.data());
  const auto* block = reinterpret_cast<const uint8_t*>(pool.data());  // pool block 0
  const cpu::KvBlockLayout lay(g);
  // Codes round((0.1 c) / 0.8999), worked out with numpy in float32: 0 x5, 1 x9, 2 x9, 3 x9,
  // 4 x9, 5 x9, 6 x9, 7 x5. Low bits of channels j, j+16, j+32, j+48 in byte j; bit 2 of
  // channel j + 8 i in bit i of byte 16 + j.
  const uint8_t want_v[24] = {0x48, 0x48, 0x88, 0x88, 0x88, 0x89, 0x89, 0x8d,
                              0x8d, 0x9d, 0x9d, 0xdd, 0xdd, 0xdd, 0xde, 0xde,
                              0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(0, std::memcmp(block + lay.v + r * 24, want_v, 24)) << "row " << r;
  }
  uint16_t v_scale;
  std::memcpy(&v_scale, block + lay.v_scale, 2);
  EXPECT_EQ(v_scale, 0x3b33);
  const int codes[8] = {5, 9, 9, 9, 9, 9, 9, 5};  // how many channels take each code
  for (int p = 0; p < 8; ++p) {
    cpu::LoadKv(g, pool.data(), table, tail.data(), 8, p, ko.data(), vo.data());
    int c = 0;
    for (int code = 0; code < 8; ++code) {
      for (int n = 0; n < codes[code]; ++n, ++c) {
        if (p < 4) {
          ASSERT_EQ(vo[c], f16(v[p * 64 + c])) << p << " " << c;
          continue;
        }
        ASSERT_EQ(ko[c], k[p * 64 + c]) << p << " " << c;
        ASSERT_EQ(vo[c], code * 0.89990234375f - 1.0f) << p << " " << c;
      }
    }
  }
}

// int4a against tests/reference/int4a_block.json: the same K/V formula, the query weights, the
// widths numpy allocated and what every position reads back (block 0 from the f16 tail).
TEST(KvCodecTest, Int4AAllocatesKBitsByQueryWeightedRangeAsNumpyDoes) {
  const nlohmann::json j = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/int4a_block.json")));
  const int t = j["block_tokens"], hd = j["head_dim"], h = j["n_kv_heads"], c = h * hd;
  const std::vector<float> weights = j["weights"].get<std::vector<float>>();
  KvGeometry g{t, h, hd, KvType::kInt4A};
  g.k_weights = weights.data();
  ASSERT_TRUE(ValidateKvGeometry(g).ok());
  std::vector<float> k(2 * t * c), v(2 * t * c);
  for (int p = 0; p < 2 * t; ++p) {
    for (int ch = 0; ch < c; ++ch) {  // the script's formula
      const int i = ch % 32;
      const float base = static_cast<float>(((37 * p + 11 * ch) % 23) - 11) * (ch % 5 + 1) / 8 +
                         (p % 2) * (ch % 3) * 4;
      k[p * c + ch] = i == 0 ? 1.5f : i == 5 ? 32 * base : base;
      v[p * c + ch] = static_cast<float>((p * 5 + ch * 3) % 17 - 8) / 4;
    }
  }
  std::vector<float> pool(2 * g.block_floats(), NAN), tail(g.tail_bytes() / 4, NAN);
  const int32_t table[] = {1, 0};
  cpu::ref::WriteKv(g, pool.data(), table, 0, 2 * t, k.data(), v.data(), tail.data());
  const auto* block = reinterpret_cast<const uint8_t*>(pool.data());  // pool block 0
  const cpu::KvBlockLayout lay(g);
  const std::vector<int> bits = j["bits"].get<std::vector<int>>();
  for (int ch = 0; ch < c; ++ch) {
    EXPECT_EQ((block[lay.k_bits + ch / 2] >> (4 * (ch % 2))) & 15, bits[ch]) << "channel " << ch;
  }
  std::vector<float> ko(c), vo(c);
  for (int p = 0; p < 2 * t; ++p) {
    cpu::LoadKv(g, pool.data(), table, tail.data(), 2 * t, p, ko.data(), vo.data());
    for (int ch = 0; ch < c; ++ch) {
      const float want_k = j["k"][p][ch], want_v = j["v"][p][ch];
      ASSERT_NEAR(ko[ch], want_k, 1e-6 * std::fabs(want_k)) << "K position " << p << " ch " << ch;
      ASSERT_NEAR(vo[ch], want_v, 1e-6 * std::fabs(want_v)) << "V position " << p << " ch " << ch;
    }
  }
}

TEST(KvCodecTest, Int4AAllocationGivesEachHeadFourBitsPerChannel) {
  // Equal costs: 4 bits each. One channel 4^8 times the rest: it takes 8 (the most), the
  // others share the remainder, ties going to the lower channel.
  std::vector<double> cost(32, 1.0);
  uint8_t bits[32];
  cpu::AllocateKBits(cost.data(), 32, bits);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(bits[i], 4) << i;
  cost[7] = std::pow(4.0, 8);
  cpu::AllocateKBits(cost.data(), 32, bits);
  int total = 0;
  for (int i = 0; i < 32; ++i) total += bits[i];
  EXPECT_EQ(total, 128);
  EXPECT_EQ(bits[7], 8);
  // 120 bits over 31 equal channels: 3 each, and one more for the 27 lowest (0-6, 8-27).
  for (int i = 0; i < 32; ++i) EXPECT_EQ(bits[i], i == 7 ? 8 : i <= 27 ? 4 : 3) << i;
}

}  // namespace
}  // namespace kvshare
