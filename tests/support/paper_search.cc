#include "tests/support/paper_search.h"

#include <tuple>

#include "common/engine/transformer.h"
#include "gtest/gtest.h"
#include "search_service/cosine_evaluator.h"
#include "search_service/strategy_search.h"

namespace kvshare::testing {

void ExpectSameSearch(const GreedyResult& want, const GreedyResult& got) {
  EXPECT_EQ(got.kv_source, want.kv_source);
  EXPECT_EQ(got.stop, want.stop);
  EXPECT_EQ(got.accepted, want.accepted);
  EXPECT_EQ(got.pairs_skipped, want.pairs_skipped);
  EXPECT_EQ(got.score, want.score);
  ASSERT_EQ(got.trace.size(), want.trace.size());
  for (size_t t = 0; t < want.trace.size(); ++t) {
    const PairTrial& a = want.trace[t];
    const PairTrial& b = got.trace[t];
    EXPECT_EQ(std::tie(b.i, b.j, b.distance, b.score, b.accepted, b.kv_source),
              std::tie(a.i, a.j, a.distance, a.score, a.accepted, a.kv_source))
        << "trial " << t;
  }
}

absl::StatusOr<PaperSearchResult> PaperSearch(const Model& model, Backend& backend,
                                              const CalibrationSet& calibration,
                                              const GreedyOptions& options) {
  auto transformer = Transformer::Create(model, backend, SearchMaxRows(calibration));
  if (!transformer.ok()) return transformer.status();
  KvAverager averager(model.config(), calibration.tokens);
  auto evaluator = CosineEvaluator::Create(**transformer, calibration, &averager);
  if (!evaluator.ok()) return evaluator.status();
  auto averaged = averager.Result();
  if (!averaged.ok()) return averaged.status();
  PaperSearchResult result;
  result.distances = ComputeLayerDistances(*averaged);
  auto greedy = GreedySearch(result.distances, options, **evaluator);
  if (!greedy.ok()) return greedy.status();
  result.greedy = std::move(*greedy);
  return result;
}

}  // namespace kvshare::testing
