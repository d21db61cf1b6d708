// Calibrated output projections (search_service/projection_fit.h) on stories260K: the fit's
// plumbing (layer order, row/column convention, the model's W_o as the ridge anchor), its
// effect on the text it was fitted on, and the calibrated selection option's checks.
#include "search_service/projection_fit.h"

#include <cmath>

#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"
#include "gtest/gtest.h"
#include "search_service/strategy_search.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

class ProjectionFitTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    auto tok = LoadTokenizerForModel(*model_, "");
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto set = BuildCalibrationSet(testing::ReadFileOrDie(testing::Asset("tinystories-sample.txt")),
                                   **tok, {6, 48}, "tinystories");
    ASSERT_TRUE(set.ok()) << set.status();
    set_ = new CalibrationSet(std::move(*set));
  }
  static void TearDownTestSuite() {
    delete set_;
    delete model_;
  }
  static Model* model_;
  static CalibrationSet* set_;
};
Model* ProjectionFitTest::model_ = nullptr;
CalibrationSet* ProjectionFitTest::set_ = nullptr;

TEST_F(ProjectionFitTest, AHugeRidgeGivesBackEachSharingLayersOwnWo) {
  auto backend = MakeCpuBackend(2);
  auto transformer = Transformer::Create(*model_, *backend, 256);
  ASSERT_TRUE(transformer.ok());
  auto st = SharingStrategy::Create({0, 0, 2, 2, 4}, model_->fingerprint());
  ASSERT_TRUE(st.ok());
  auto p = FitOutputProjections(**transformer, *set_, *st, 1e9, DType::kF32);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_NE(*p, nullptr);
  EXPECT_EQ((*p)->layers(), std::vector<int>({1, 3}));
  for (int i = 0; i < 2; ++i) {
    const Tensor& wo = model_->weights().layers[(*p)->layers()[i]].wo;  // fp32 [dim][q]
    const std::vector<float> got = (*p)->LayerF32(i);
    ASSERT_EQ(got.size(), size_t(wo.elements()));
    double worst = 0;
    for (size_t k = 0; k < got.size(); ++k) {
      worst = std::max(worst, double(std::abs(got[k] - static_cast<const float*>(wo.data)[k])));
    }
    EXPECT_LT(worst, 1e-5) << "layer " << (*p)->layers()[i];
  }
  auto identity = SharingStrategy::Create({0, 1, 2, 3, 4}, model_->fingerprint());
  auto none = FitOutputProjections(**transformer, *set_, *identity, 0.1, DType::kF16);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
}

TEST_F(ProjectionFitTest, ProjectionsFittedOnATextLowerItsNllUnderTheStrategy) {
  // Fit and score on the same windows: the fit must help there (the search never does this;
  // it is the property the fit is built for).
  auto calibrator = ProjectionCalibrator::Create(*model_, *set_, *set_, 2);
  ASSERT_TRUE(calibrator.ok()) << calibrator.status();
  auto st = SharingStrategy::Create({0, 0, 2, 2, 4}, model_->fingerprint());
  ASSERT_TRUE(st.ok());
  auto cal = (*calibrator)->Calibrate(*st, {0.01}, DType::kF16);
  ASSERT_TRUE(cal.ok()) << cal.status();
  ASSERT_NE(cal->projections, nullptr);
  EXPECT_GT(cal->uncalibrated_score_nll, (*calibrator)->unshared_score_nll());
  EXPECT_LT(cal->score_nll, cal->uncalibrated_score_nll);
  EXPECT_EQ(cal->ridge, 0.01);
}

TEST_F(ProjectionFitTest, SubstitutesFittedOnATextLowerTheNllOfItsDrops) {
  auto calibrator = ProjectionCalibrator::Create(*model_, *set_, *set_, 2);
  ASSERT_TRUE(calibrator.ok()) << calibrator.status();
  // Drops alone, and drops beside a sharing layer (projections and substitutes in one blob).
  for (auto [kv, drops] : {std::pair<std::vector<int>, std::vector<int>>{{0, 1, 2, 3, 4}, {2, 4}},
                           {{0, 0, 2, 3, 4}, {3}}}) {
    auto st = SharingStrategy::Create(kv, model_->fingerprint(), drops);
    ASSERT_TRUE(st.ok());
    auto bare = (*calibrator)->Calibrate(*st, {0.01}, DType::kF16, /*substitutes=*/false);
    ASSERT_TRUE(bare.ok()) << bare.status();
    auto cal = (*calibrator)->Calibrate(*st, {0.01}, DType::kF16, /*substitutes=*/true);
    ASSERT_TRUE(cal.ok()) << cal.status();
    ASSERT_NE(cal->projections, nullptr);
    EXPECT_EQ(cal->projections->substitutes(), drops);
    const size_t shared = bare->projections != nullptr ? bare->projections->layers().size() : 0;
    EXPECT_EQ(cal->projections->layers().size(), shared);
    EXPECT_LT(cal->score_nll, bare->score_nll) << st->CanonicalString();
    // The substitutes are not nothing: a bias and a matrix of some size.
    double bias = 0;
    for (float b : cal->projections->SubstituteBiasF32(0)) bias += std::abs(b);
    EXPECT_GT(bias, 0.0);
  }
}

TEST_F(ProjectionFitTest, EachSubstituteFromOnePassEqualsItsOwnFit) {
  auto backend = MakeCpuBackend(2);
  auto transformer = Transformer::Create(*model_, *backend, 256);
  ASSERT_TRUE(transformer.ok());
  auto each = FitEachSubstitute(**transformer, *set_, 0.01, DType::kF32);
  ASSERT_TRUE(each.ok()) << each.status();
  ASSERT_EQ(each->size(), 5u);
  EXPECT_EQ((*each)[0], nullptr);
  for (int l = 1; l < 5; ++l) {
    auto st = SharingStrategy::Create({0, 1, 2, 3, 4}, model_->fingerprint(), {l});
    ASSERT_TRUE(st.ok());
    auto own = FitOutputProjections(**transformer, *set_, *st, 0.01, DType::kF32, true);
    ASSERT_TRUE(own.ok()) << own.status();
    ASSERT_NE((*each)[l], nullptr);
    EXPECT_EQ((*each)[l]->substitutes(), std::vector<int>{l});
    for (auto [got, want] :
         {std::pair{(*each)[l]->SubstituteMatrixF32(0), (*own)->SubstituteMatrixF32(0)},
          {(*each)[l]->SubstituteBiasF32(0), (*own)->SubstituteBiasF32(0)}}) {
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_NEAR(got[i], want[i], 1e-4 * (1 + std::abs(want[i]))) << "layer " << l << " " << i;
      }
    }
  }
}

TEST_F(ProjectionFitTest, CalibratedScoringNeedsTheNllMethodAndACalibrator) {
  auto backend = MakeCpuBackend(2);
  SelectionOptions o;
  o.greedy.target_layers = 1;
  o.calibrated = true;
  o.method = SearchMethod::kKvSharer;
  auto r = RunStrategySearch(*model_, *backend, *set_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("applies to --method nll"), std::string::npos) << r.status();
  o.method = SearchMethod::kNll;
  r = RunStrategySearch(*model_, *backend, *set_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("no calibrator"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace kvshare
