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

// The linear substitute's affine fit: inputs H with a trailing 1 (the intercept), outputs D.
TEST(RidgeFitTest, AffineFitMatchesNumpyLeastSquaresWithAFreeIntercept) {
  const auto ref = nlohmann::json::parse(
      testing::ReadFileOrDie(testing::SourcePath("tests/reference/ridge_fit_reference.json")));
  const int rows = ref["rows"], q = ref["q"], dim = ref["dim"];
  const std::vector<float> h = Flat(ref["h"]), d = Flat(ref["d"]);
  std::vector<float> h1;
  for (int r = 0; r < rows; ++r) {
    h1.insert(h1.end(), h.begin() + size_t(r) * q, h.begin() + size_t(r + 1) * q);
    h1.push_back(1.0f);
  }
  RidgeAccumulator sums(q + 1, dim);
  sums.Add(h1.data(), d.data(), 9);
  sums.Add(h1.data() + size_t(9) * (q + 1), d.data() + size_t(9) * dim, rows - 9);
  for (const auto& c : ref["affine"]) {
    auto fit = SolveRidgeAffine(sums, c["ridge"].get<double>());
    ASSERT_TRUE(fit.ok()) << fit.status();
    const std::vector<float> m = Flat(c["m"]);
    ASSERT_EQ(fit->matrix.size(), m.size());
    for (size_t i = 0; i < m.size(); ++i) {
      EXPECT_NEAR(fit->matrix[i], m[i], 2e-4 * (1 + std::abs(m[i]))) << "ridge " << c["ridge"];
    }
    ASSERT_EQ(fit->bias.size(), size_t(dim));
    for (int j = 0; j < dim; ++j) {
      const float want = c["bias"][j].get<float>();
      EXPECT_NEAR(fit->bias[j], want, 2e-4 * (1 + std::abs(want))) << "ridge " << c["ridge"];
    }
  }
  // A huge ridge leaves only the intercept: the mean of D.
  auto flat = SolveRidgeAffine(sums, 1e9);
  ASSERT_TRUE(flat.ok());
  for (int j = 0; j < dim; ++j) {
    double mean = 0;
    for (int r = 0; r < rows; ++r) mean += d[size_t(r) * dim + j];
    EXPECT_NEAR(flat->bias[j], mean / rows, 1e-4);
  }
  EXPECT_EQ(SolveRidgeAffine(sums, 0.0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveRidgeAffine(RidgeAccumulator(q + 1, dim), 0.1).status().code(),
            absl::StatusCode::kFailedPrecondition);
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
