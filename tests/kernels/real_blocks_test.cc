// Blocks from real GGUF files (tests/reference/quant_blocks.json, made by
// quant_blocks_reference.py with the `gguf` package's numpy dequantisers): the reference
// decoder and the repacked weights give the same bits as gguf, and every matmul path gives
// gguf's dot products.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "kernels/cpu/packed_weight.h"
#include "kernels/cpu/quant.h"
#include "nlohmann/json.hpp"
#include "tests/kernels/kernel_test_util.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

struct RealBlocks {
  DType type;
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // gguf's, row-major
  std::vector<double> dots;
  Tensor tensor;
};

std::vector<RealBlocks> Load() {
  const nlohmann::json j = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/quant_blocks.json")));
  const int rows = j["rows"], cols = j["cols"];
  std::vector<RealBlocks> out;
  for (const auto& [name, t] : j["types"].items()) {
    RealBlocks b;
    b.type = DType::kF32;
    for (DType d : testing::AllDTypes()) {
      if (name == GetDTypeInfo(d).name) b.type = d;
    }
    EXPECT_NE(b.type, DType::kF32) << name;
    for (const auto& row : t["bytes"]) {
      const std::string raw = absl::HexStringToBytes(row.get<std::string>());
      b.bytes.insert(b.bytes.end(), raw.begin(), raw.end());
    }
    for (const auto& row : t["values"]) {
      for (uint32_t bits : row.get<std::vector<uint32_t>>()) {
        float f;
        std::memcpy(&f, &bits, 4);
        b.values.push_back(f);
      }
    }
    b.dots = t["dots"].get<std::vector<double>>();
    out.push_back(std::move(b));
  }
  for (RealBlocks& b : out) {
    b.tensor.name = std::string("real.") + GetDTypeInfo(b.type).name;
    b.tensor.type = b.type;
    b.tensor.shape = {cols, rows};
    b.tensor.data = b.bytes.data();
    b.tensor.nbytes = b.bytes.size();
    EXPECT_EQ(b.bytes.size(), StorageBytes(b.type, cols) * rows) << b.tensor.name;
  }
  return out;
}

TEST(RealBlocksTest, CoversTheTypesGemma3AndKQuantSmolLm2Use) {
  std::vector<std::string> names;
  for (const RealBlocks& b : Load()) names.push_back(GetDTypeInfo(b.type).name);
  for (const char* need :
       {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "Q5_K", "Q5_1", "Q3_K", "Q4_0", "Q4_1"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), need), names.end()) << need;
  }
}

TEST(RealBlocksTest, DecodersGiveGgufsBits) {
  for (const RealBlocks& b : Load()) {
    const int64_t rows = b.tensor.rows(), cols = b.tensor.cols();
    std::vector<float> got(cols);
    auto packed = cpu::CpuWeight::Create(b.tensor, /*repack=*/true);
    ASSERT_TRUE(packed.ok()) << packed.status();
    for (int64_t r = 0; r < rows; ++r) {
      cpu::DequantizeRow(b.type, b.tensor.row_data(r), cols, got.data());
      ASSERT_EQ(0, std::memcmp(got.data(), &b.values[r * cols], cols * 4))
          << b.tensor.name << " row " << r << " (reference decoder)";
      (*packed)->DequantizeRow(r, got.data());
      ASSERT_EQ(0, std::memcmp(got.data(), &b.values[r * cols], cols * 4))
          << b.tensor.name << " row " << r << " (repacked)";
    }
  }
}

TEST(RealBlocksTest, EveryMatMulPathGivesGgufsDotProducts) {
  for (const RealBlocks& b : Load()) {
    const int64_t rows = b.tensor.rows(), cols = b.tensor.cols();
    std::vector<float> x(cols);
    for (int64_t c = 0; c < cols; ++c) x[c] = static_cast<float>(std::sin(0.37 * c + 0.1));
    for (cpu::Isa isa : testing::SupportedIsas()) {
      for (bool int8 : {false, true}) {
        cpu::MatMulOptions options;
        options.activations = int8 ? cpu::Activations::kInt8 : cpu::Activations::kF32;
        auto backend = testing::CpuBackendAt(isa, 2, options);
        auto w = backend->Prepare(b.tensor);
        ASSERT_TRUE(w.ok()) << w.status();
        std::vector<float> out(rows);
        backend->MatMul(**w, x.data(), 1, out.data());
        for (int64_t r = 0; r < rows; ++r) {
          // fp32 rounding of the sum (exact path); with int8 activations, also half an int8
          // step of each 32-block's scale times the block's |w| (the offset terms use the
          // exact sum of x, so this over-counts them: a bound, not an estimate).
          double abs_sum = 0.0, int8_err = 0.0;
          for (int64_t blk = 0; blk < cols / 32; ++blk) {
            double amax = 0.0, wsum = 0.0;
            for (int j = 0; j < 32; ++j) {
              const int64_t c = blk * 32 + j;
              abs_sum += std::fabs(static_cast<double>(x[c]) * b.values[r * cols + c]);
              amax = std::fmax(amax, std::fabs(x[c]));
              wsum += std::fabs(b.values[r * cols + c]);
            }
            int8_err += wsum * amax / 127.0 / 2.0;
          }
          const double tol = 1e-5 * abs_sum + (int8 && isa != cpu::Isa::kScalar ? int8_err : 0.0);
          EXPECT_NEAR(out[r], b.dots[r], tol) << b.tensor.name << " row " << r << " isa "
                                              << cpu::IsaName(isa) << (int8 ? " int8" : " exact");
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvshare
