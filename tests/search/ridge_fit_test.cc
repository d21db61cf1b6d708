// The calibrated-projection ridge fit (search_service/ridge_fit.h) against numpy's least-squares
// solution of the stacked problem (tests/reference/ridge_fit_reference.py), a different route
// from the normal equations and Cholesky solve under test.
#include "search_service/ridge_fit.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

std::vector<float> Flat(const nlohmann::json& m) {
  std::vector<float> out;
  for (const auto& row : m)
    for (const auto& v : row) out.push_back(v.get<float>());
  return out;
}

TEST(RidgeFitTest, MatchesNumpyLeastSquaresAtEveryRidgeWhateverTheBatching) {
  const auto ref = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/ridge_fit_reference.json")));
  const int rows = ref["rows"], q = ref["q"], dim = ref["dim"];
  const std::vector<float> a = Flat(ref["a"]), b = Flat(ref["b"]), wo = Flat(ref["wo"]);
  for (int split : {rows, 10}) {  // one batch, or two
    RidgeAccumulator sums(q);
    sums.Add(a.data(), b.data(), split);
    sums.Add(a.data() + size_t(split) * q, b.data() + size_t(split) * q, rows - split);
    EXPECT_EQ(sums.rows(), rows);
    for (const auto& c : ref["cases"]) {
      auto w = SolveRidgeProjection(sums, wo, dim, c["ridge"].get<double>());
      ASSERT_TRUE(w.ok()) << w.status();
      const std::vector<float> want = Flat(c["w"]);
      ASSERT_EQ(w->size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_NEAR((*w)[i], want[i], 2e-4 * (1 + std::abs(want[i])))
            << "ridge " << c["ridge"] << " entry " << i;
      }
    }
  }
}

TEST(RidgeFitTest, AHugeRidgeGivesBackTheModelsProjection) {
  const int q = 3, dim = 2;
  const std::vector<float> a = {1, 0, 2, 0, 1, 1, 3, 1, 0, 1, 1, 1};
  const std::vector<float> b = {0, 1, 0, 2, 1, 0, 1, 1, 1, 0, 0, 3};
  const std::vector<float> wo = {0.5f, -1, 2, 1, 0.25f, -0.5f};
  RidgeAccumulator sums(q);
  sums.Add(a.data(), b.data(), 4);
  auto w = SolveRidgeProjection(sums, wo, dim, 1e9);
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t i = 0; i < wo.size(); ++i) EXPECT_NEAR((*w)[i], wo[i], 1e-6);
}

TEST(RidgeFitTest, RejectsBadRidgeSizesAndAllZeroAttention) {
  RidgeAccumulator sums(2);
  const std::vector<float> wo = {1, 0, 0, 1};
  EXPECT_EQ(SolveRidgeProjection(sums, wo, 2, 0.0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveRidgeProjection(sums, {1, 2, 3}, 2, 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<float> zeros(4, 0.0f);
  sums.Add(zeros.data(), zeros.data(), 2);
  EXPECT_EQ(SolveRidgeProjection(sums, wo, 2, 0.1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvshare
