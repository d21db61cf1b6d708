// What the search service relies on in the search library: progress before every candidate
// (with the current best), the phases in order, and cancellation that stops before the next
// forward pass — so within one candidate evaluation of the request.
#include <atomic>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "search_service/greedy_search.h"
#include "search_service/strategy_search.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;

// Accepts every candidate whose i is odd; sets `cancel` while scoring candidate `cancel_at`.
class ScriptedEvaluator : public Evaluator {
 public:
  ScriptedEvaluator(std::atomic<bool>* cancel, int cancel_at)
      : cancel_(cancel), cancel_at_(cancel_at) {}
  absl::StatusOr<double> Score(const std::vector<int>&, int first) override {
    if (scored_++ == cancel_at_) cancel_->store(true);
    return first % 2 == 1 ? 0.9 : 0.1;
  }
  absl::Status Accept(const std::vector<int>&, int) override { return absl::OkStatus(); }
  int scored_ = 0;

 private:
  std::atomic<bool>* cancel_;
  int cancel_at_;
};

LayerDistances Distances(int n_layers) {
  LayerDistances d(n_layers);
  for (int i = 1; i < n_layers; ++i) {
    for (int j = 0; j < i; ++j) d.Set(i, j, 100 - 10 * i + j, 100 - 10 * i + j);
  }
  return d;
}

TEST(SearchHooksTest, ProgressCarriesTheCurrentBestBeforeEachCandidate) {
  std::atomic<bool> cancel{false};
  ScriptedEvaluator evaluator(&cancel, /*cancel_at=*/-1);
  GreedyOptions options;
  options.target_layers = 2;
  std::vector<std::tuple<int, int, double, int>> seen;  // scored, accepted, score, sharing
  auto r = GreedySearch(Distances(5), options, evaluator, [&](const GreedyProgress& p) {
    EXPECT_EQ(p.kv_source.size(), 5u);
    seen.push_back({p.pairs_scored, p.accepted, p.score, p.sharing_layers});
  });
  ASSERT_TRUE(r.ok());
  // Pairs by distance: (1, 0) first (i = 1 accepted), then i = 2 (rejected), then i = 3.
  EXPECT_THAT(seen, ElementsAre(std::tuple{0, 0, 1.0, 0}, std::tuple{1, 1, 0.9, 1},
                                std::tuple{2, 1, 0.9, 1}, std::tuple{3, 1, 0.9, 1}));
}

TEST(SearchHooksTest, CancelStopsBeforeTheNextCandidate) {
  std::atomic<bool> cancel{false};
  ScriptedEvaluator evaluator(&cancel, /*cancel_at=*/2);  // raised while scoring the 3rd
  GreedyOptions options;
  options.target_layers = 4;
  options.threshold = 0.95;  // nothing accepted: all 10 pairs would be scored
  auto r = GreedySearch(Distances(5), options, evaluator, nullptr, &cancel);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(evaluator.scored_, 3);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("after 3 pairs scored"));
}

TEST(SearchHooksTest, TheDriverReportsItsPhasesAndHonoursCancelOnARealModel) {
  auto model = Model::Load(testing::Asset("stories260K.bin"));
  ASSERT_TRUE(model.ok());
  auto tokenizer = LoadTokenizerForModel(**model, "");
  ASSERT_TRUE(tokenizer.ok());
  auto calibration =
      BuildCalibrationSet(testing::ReadFileOrDie(testing::Asset("tinystories-sample.txt")),
                          **tokenizer, {4, 32}, "tinystories");
  ASSERT_TRUE(calibration.ok());
  auto backend = MakeCpuBackend(1);
  SelectionOptions options;  // the paper's rule
  options.greedy.target_layers = 4;
  options.greedy.threshold = 1.0;  // never accepts: scores every pair unless stopped

  std::atomic<bool> cancel{false};
  std::vector<SearchPhase> phases;
  int progress_calls = 0;
  SearchHooks hooks;
  hooks.on_phase = [&](SearchPhase p) { phases.push_back(p); };
  hooks.progress = [&](const GreedyProgress& p) {
    if (++progress_calls == 4) cancel = true;
    EXPECT_EQ(p.pairs_scored, progress_calls - 1);
  };
  hooks.cancel = &cancel;
  auto r = RunStrategySearch(**model, *backend, *calibration, options, hooks);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(progress_calls, 4);  // the 4th candidate was not scored
  EXPECT_THAT(phases, ElementsAre(SearchPhase::kCalibration, SearchPhase::kGreedy));

  // Cancelled before it starts: not even the calibration forward runs.
  phases.clear();
  auto early = RunStrategySearch(**model, *backend, *calibration, options, hooks);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(phases, ElementsAre(SearchPhase::kCalibration));
}

}  // namespace
}  // namespace kvshare
