// The KVSharer search on a real model (stories260K: 5 layers, GQA 8/4 heads, fp32) against an
// independent double-precision reference written here on top of tests/support/naive_llama.h:
// the averaged K/V and the layer distance matrix (docs/METHOD.md §3), and the cosine score of
// candidates evaluated from their first changed layer on cached states. Then determinism across
// thread counts, and every bad search request.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_format.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/cosine_evaluator.h"
#include "search_service/loss_evaluator.h"
#include "search_service/search_request.h"
#include "search_service/strategy_search.h"
#include "tests/support/naive_llama.h"
#include "tests/support/paper_search.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
using testing::NaiveLlamaForward;
using testing::NaiveRun;
using testing::Vec;

class KvSharerSearchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    auto tok = LoadTokenizerForModel(*model_, "");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    text_ = new std::string(testing::ReadFileOrDie(testing::Asset("tinystories-sample.txt")));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
    delete text_;
  }

  static CalibrationSet Calibration(int samples, int tokens) {
    CalibrationOptions o;
    o.samples = samples;
    o.tokens = tokens;
    auto set = BuildCalibrationSet(*text_, *tokenizer_, o, "tinystories-sample.txt");
    EXPECT_TRUE(set.ok()) << set.status();
    return *set;
  }
  static std::vector<int32_t> Sample(const CalibrationSet& c, int s) {
    return std::vector<int32_t>(c.sample(s), c.sample(s) + c.tokens);
  }
  // Mean over samples of the cosine between the flattened final-norm states of the unshared
  // model and of kv_source, in double.
  static double NaiveScore(const CalibrationSet& c, const std::vector<NaiveRun>& unshared,
                           const std::vector<int>& kv_source) {
    double total = 0;
    for (int s = 0; s < c.samples; ++s) {
      const NaiveRun run = NaiveLlamaForward(*model_, kv_source, Sample(c, s), false);
      double ab = 0, aa = 0, bb = 0;
      for (int t = 0; t < c.tokens; ++t) {
        const Vec& a = unshared[s].final_hidden[t];
        const Vec& b = run.final_hidden[t];
        for (size_t i = 0; i < a.size(); ++i) {
          ab += a[i] * b[i];
          aa += a[i] * a[i];
          bb += b[i] * b[i];
        }
      }
      total += ab / std::sqrt(aa * bb);
    }
    return total / c.samples;
  }
  static std::vector<NaiveRun> Unshared(const CalibrationSet& c) {
    std::vector<NaiveRun> runs;
    for (int s = 0; s < c.samples; ++s) {
      runs.push_back(NaiveLlamaForward(*model_, Identity(), Sample(c, s), false));
    }
    return runs;
  }
  static std::vector<int> Identity() { return {0, 1, 2, 3, 4}; }

  static Model* model_;
  static Tokenizer* tokenizer_;
  static std::string* text_;
};
Model* KvSharerSearchTest::model_ = nullptr;
Tokenizer* KvSharerSearchTest::tokenizer_ = nullptr;
std::string* KvSharerSearchTest::text_ = nullptr;

TEST_F(KvSharerSearchTest, CalibrationSetStartsWithBosAndHasTheRequestedShape) {
  const CalibrationSet c = Calibration(30, 64);
  ASSERT_EQ(c.ids.size(), 30u * 64);
  for (int s = 0; s < 30; ++s) EXPECT_EQ(c.sample(s)[0], tokenizer_->bos_id());
  // The sample is the first 64 tokens of its line.
  std::string text = *text_;
  std::vector<std::string> lines;
  for (size_t p = 0, e; p <= text.size(); p = e + 1) {
    e = text.find('\n', p);
    if (e == std::string::npos) e = text.size();
    lines.push_back(text.substr(p, e - p));
  }
  const int line = c.source_lines[7];
  const auto want = tokenizer_->Encode(lines[line - 1], true);
  ASSERT_GE(want.size(), 64u);
  EXPECT_EQ(Sample(c, 7), std::vector<int32_t>(want.begin(), want.begin() + 64));
}

TEST_F(KvSharerSearchTest, DistancesEqualAnIndependentDoublePrecisionReference) {
  const CalibrationSet c = Calibration(5, 24);
  auto backend = MakeCpuBackend(2);
  auto transformer = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  ASSERT_TRUE(transformer.ok()) << transformer.status();
  KvAverager averager(model_->config(), c.tokens);
  auto evaluator = CosineEvaluator::Create(**transformer, c, &averager);
  ASSERT_TRUE(evaluator.ok()) << evaluator.status();
  auto avg = averager.Result();
  ASSERT_TRUE(avg.ok()) << avg.status();
  const LayerDistances got = ComputeLayerDistances(*avg);

  // Reference: average the naive K/V over samples, then mean over (token, kv head) of the
  // Euclidean norm over head_dim of the difference.
  const ModelConfig& mc = model_->config();
  const int L = mc.n_layers, hd = mc.head_dim, kvh = mc.n_kv_heads;
  std::vector<std::vector<Vec>> k_avg(L, std::vector<Vec>(c.tokens, Vec(kvh * hd, 0.0)));
  auto v_avg = k_avg;
  for (const NaiveRun& run : Unshared(c)) {
    for (int l = 0; l < L; ++l) {
      for (int t = 0; t < c.tokens; ++t) {
        for (int e = 0; e < kvh * hd; ++e) {
          k_avg[l][t][e] += run.keys[l][t][e] / c.samples;
          v_avg[l][t][e] += run.values[l][t][e] / c.samples;
        }
      }
    }
  }
  auto distance = [&](const std::vector<Vec>& a, const std::vector<Vec>& b) {
    double sum = 0;
    for (int t = 0; t < c.tokens; ++t) {
      for (int h = 0; h < kvh; ++h) {
        double ss = 0;
        for (int e = h * hd; e < (h + 1) * hd; ++e) ss += std::pow(a[t][e] - b[t][e], 2);
        sum += std::sqrt(ss);
      }
    }
    return sum / (c.tokens * kvh);
  };
  for (int i = 1; i < L; ++i) {
    for (int j = 0; j < i; ++j) {
      const double dk = distance(k_avg[i], k_avg[j]), dv = distance(v_avg[i], v_avg[j]);
      EXPECT_NEAR(got.dk(i, j), dk, 1e-4 * (1 + dk)) << i << "," << j;
      EXPECT_NEAR(got.dv(i, j), dv, 1e-4 * (1 + dv)) << i << "," << j;
      EXPECT_NEAR(got.distance(i, j), (dk + dv) / 2, 1e-4 * (1 + dk + dv)) << i << "," << j;
      EXPECT_GT(dk, 0);
    }
  }
}

TEST_F(KvSharerSearchTest, CandidateScoresFromCachedStatesEqualAFullNaiveRecompute) {
  const CalibrationSet c = Calibration(4, 20);
  const std::vector<NaiveRun> unshared = Unshared(c);
  for (int rows : {c.samples * c.tokens, c.tokens}) {  // one batch, and one sample per batch
    auto backend = MakeCpuBackend(2);
    auto transformer = Transformer::Create(*model_, *backend, rows);
    ASSERT_TRUE(transformer.ok());
    auto evaluator = CosineEvaluator::Create(**transformer, c);
    ASSERT_TRUE(evaluator.ok()) << evaluator.status();
    CosineEvaluator& e = **evaluator;
    // A sequence of greedy steps: accept (4, 1), try and reject (3, 2), accept (2, 0), then
    // score (1, 0), which also moves layers 2 and 4 (they read 1's root... now 0) from layer 1.
    struct Step {
      std::vector<int> kv_source;
      int first;
      bool accept;
    };
    for (const Step& step : std::vector<Step>{{{0, 1, 2, 3, 1}, 4, true},
                                              {{0, 1, 2, 2, 1}, 3, false},
                                              {{0, 1, 0, 3, 1}, 2, true},
                                              {{0, 0, 0, 3, 0}, 1, false},
                                              {{0, 1, 0, 0, 1}, 3, true}}) {
      auto score = e.Score(step.kv_source, step.first);
      ASSERT_TRUE(score.ok()) << score.status();
      const double want = NaiveScore(c, unshared, step.kv_source);
      EXPECT_NEAR(*score, want, 2e-6) << "rows " << rows << " first " << step.first;
      EXPECT_LT(*score, 1.0);
      if (step.accept) {
        ASSERT_TRUE(e.Accept(step.kv_source, step.first).ok());
      }
    }
    EXPECT_EQ(e.accepted(), (std::vector<int>{0, 1, 0, 0, 1}));
  }
}

TEST_F(KvSharerSearchTest, AcceptingAStrategyNotJustScoredRecomputesIt) {
  const CalibrationSet c = Calibration(3, 16);
  auto backend = MakeCpuBackend(1);
  auto transformer = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  ASSERT_TRUE(transformer.ok());
  auto e = CosineEvaluator::Create(**transformer, c);
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Score({0, 1, 2, 3, 3}, 4).ok());
  ASSERT_TRUE((*e)->Accept({0, 1, 2, 2, 4}, 3).ok());  // a different candidate
  auto score = (*e)->Score({0, 1, 2, 2, 2}, 4);
  ASSERT_TRUE(score.ok());
  EXPECT_NEAR(*score, NaiveScore(c, Unshared(c), {0, 1, 2, 2, 2}), 2e-6);
}

TEST_F(KvSharerSearchTest, TheBestCandidateOfAStepIsAcceptedWithoutRunningItAgain) {
  // A best-of-K step scores several candidates and accepts the best, usually not the last one
  // run: the loss evaluator keeps the best-scoring run aside, so accepting it costs no forward,
  // and what follows is bit for bit what accepting it right after its own run gives.
  const CalibrationSet c = Calibration(4, 16);
  auto backend = MakeCpuBackend(1);
  auto transformer = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  ASSERT_TRUE(transformer.ok());
  auto make = [&]() {
    auto e = LossEvaluator::Create(**transformer, c, CandidateMetric::kNllIncrease, nullptr,
                                   /*keep_best=*/true);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  };
  // One step's candidates (all change layers >= 3 only).
  const std::vector<std::vector<int>> step = {
      {0, 1, 2, 3, 3}, {0, 1, 2, 2, 4}, {0, 1, 2, 1, 4}, {0, 1, 2, 0, 4}};
  auto first_changed = [](const std::vector<int>& kv_source) { return kv_source[3] != 3 ? 3 : 4; };
  auto stepwise = make();
  std::vector<double> scores;
  for (const std::vector<int>& k : step) {
    auto score = stepwise->Score(k, first_changed(k));
    ASSERT_TRUE(score.ok()) << score.status();
    scores.push_back(*score);
  }
  const size_t best = std::max_element(scores.begin(), scores.end()) - scores.begin();
  ASSERT_NE(best, step.size() - 1) << "the test needs a best candidate that is not the last run";
  ASSERT_TRUE(stepwise->Accept(step[best], first_changed(step[best])).ok());
  EXPECT_EQ(stepwise->accept_reruns(), 0);
  EXPECT_EQ(stepwise->accepted(), step[best]);
  std::vector<int> next = step[best];  // the next step's candidate: layer 4 reads layer 1
  next[4] = 1;
  auto after = stepwise->Score(next, 4);
  ASSERT_TRUE(after.ok()) << after.status();

  auto direct = make();
  auto score = direct->Score(step[best], first_changed(step[best]));
  ASSERT_TRUE(score.ok());
  EXPECT_EQ(*score, scores[best]);
  ASSERT_TRUE(direct->Accept(step[best], first_changed(step[best])).ok());
  auto want = direct->Score(next, 4);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(*after, *want);

  // Without keep_best (the KV plan search's evaluator) nothing is set aside: the same accept
  // runs the candidate again.
  auto plain = LossEvaluator::Create(**transformer, c, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(plain.ok());
  for (const std::vector<int>& k : step) ASSERT_TRUE((*plain)->Score(k, first_changed(k)).ok());
  ASSERT_TRUE((*plain)->Accept(step[best], first_changed(step[best])).ok());
  EXPECT_EQ((*plain)->accept_reruns(), 1);
  EXPECT_EQ(*(*plain)->Score(next, 4), *want);

  // A candidate neither kept nor last run is run again for its accept, and is what is accepted.
  std::vector<int> unscored = step[best];
  unscored[4] = 0;
  ASSERT_TRUE(stepwise->Accept(unscored, 4).ok());
  EXPECT_EQ(stepwise->accept_reruns(), 1);
  auto measured = stepwise->Measure(unscored);
  ASSERT_TRUE(measured.ok());
  auto fresh = make()->Measure(unscored);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(measured->nll, fresh->nll);
  EXPECT_EQ(stepwise->accepted(), unscored);
}

TEST_F(KvSharerSearchTest, CandidatesThatAreNotAStepFromTheAcceptedStrategyAreRejected) {
  const CalibrationSet c = Calibration(2, 8);
  auto backend = MakeCpuBackend(1);
  auto transformer = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  ASSERT_TRUE(transformer.ok());
  auto e = CosineEvaluator::Create(**transformer, c);
  ASSERT_TRUE(e.ok());
  for (auto [kv_source, first, message] :
       std::vector<std::tuple<std::vector<int>, int, std::string>>{
           {{0, 1, 2, 3}, 1, "has 4 layers"},
           {{0, 1, 2, 3, 4}, 0, "first changed layer 0"},
           {{0, 1, 1, 2, 4}, 2, "layer 3 reads 2"},
           {{0, 0, 2, 3, 4}, 3, "first changed layer is said to be 3"}}) {
    auto s = (*e)->Score(kv_source, first);
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(message));
  }
}

std::string TraceText(const StrategySearchResult& r) {
  std::string out;
  const int L = r.distances.n_layers();
  for (int i = 1; i < L; ++i) {
    for (int j = 0; j < i; ++j) {
      out += absl::StrFormat("d %d %d %a %a\n", i, j, r.distances.dk(i, j), r.distances.dv(i, j));
    }
  }
  for (const PairTrial& t : r.selection.greedy.trace) {
    out += absl::StrFormat("t %d %d %a %a %d\n", t.i, t.j, t.distance, t.score, t.accepted);
  }
  return out + r.strategy->ToJson();
}

TEST_F(KvSharerSearchTest, SearchIsIdenticalByteForByteAtOneAndTwoThreads) {
  const CalibrationSet c = Calibration(30, 64);
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    SelectionOptions s;  // the paper's rule: kvsharer, best of 1
    GreedyOptions& o = s.greedy;
    o.order = order;
    o.seed = 7;
    o.target_layers = 3;
    std::vector<std::string> texts;
    for (int threads : {1, 2}) {
      auto backend = MakeCpuBackend(threads);
      auto r = RunStrategySearch(*model_, *backend, c, s);
      ASSERT_TRUE(r.ok()) << r.status();
      texts.push_back(TraceText(*r));
      EXPECT_FALSE(r->selection.greedy.trace.empty());
    }
    EXPECT_EQ(texts[0], texts[1]) << PairOrderName(order);
  }
}

// RunStrategySearch runs best-of-1 selection for the paper's rule; on a real model and the real
// evaluator it must make GreedySearch's choices bit for bit, for every order.
TEST_F(KvSharerSearchTest, ThePapersRuleThroughRunStrategySearchIsGreedySearchExactly) {
  const CalibrationSet c = Calibration(10, 32);
  auto backend = MakeCpuBackend(2);
  int rejected = 0;
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    for (double threshold : {0.5, 0.9}) {
      SelectionOptions s;
      s.greedy.order = order;
      s.greedy.seed = 3;
      s.greedy.threshold = threshold;
      s.greedy.target_layers = 4;
      SCOPED_TRACE(absl::StrFormat("%s threshold %g", PairOrderName(order), threshold));
      auto paper = testing::PaperSearch(*model_, *backend, c, s.greedy);
      ASSERT_TRUE(paper.ok()) << paper.status();
      auto driver = RunStrategySearch(*model_, *backend, c, s);
      ASSERT_TRUE(driver.ok()) << driver.status();
      testing::ExpectSameSearch(paper->greedy, driver->selection.greedy);
      EXPECT_EQ(driver->strategy->kv_source(), paper->greedy.kv_source);
      EXPECT_EQ(driver->calibration_score, paper->greedy.score);
      for (int i = 1; i < 5; ++i) {
        for (int j = 0; j < i; ++j) {
          EXPECT_EQ(driver->distances.dk(i, j), paper->distances.dk(i, j));
          EXPECT_EQ(driver->distances.dv(i, j), paper->distances.dv(i, j));
        }
      }
      // Best of 1 never outranks: a scored candidate is accepted or below the threshold.
      ASSERT_EQ(driver->selection.outcome.size(), paper->greedy.trace.size());
      for (size_t t = 0; t < paper->greedy.trace.size(); ++t) {
        EXPECT_EQ(driver->selection.outcome[t], paper->greedy.trace[t].accepted
                                                    ? TrialOutcome::kAccepted
                                                    : TrialOutcome::kBelowThreshold);
        rejected += !paper->greedy.trace[t].accepted;
      }
    }
  }
  EXPECT_GT(rejected, 0);  // the cases include rejected candidates
}

TEST_F(KvSharerSearchTest, TheStrategyRecordsItsProvenance) {
  const CalibrationSet c = Calibration(8, 32);
  SelectionOptions s;
  GreedyOptions& o = s.greedy;
  o.target_layers = 2;
  o.threshold = 0.25;
  auto backend = MakeCpuBackend(2);
  auto r = RunStrategySearch(*model_, *backend, c, s);
  ASSERT_TRUE(r.ok()) << r.status();
  const SharingStrategy& st = *r->strategy;
  EXPECT_EQ(st.model_fingerprint(), model_->fingerprint());
  EXPECT_EQ(st.kv_source(), r->selection.greedy.kv_source);
  EXPECT_EQ(st.provenance().method, "kvsharer");
  EXPECT_EQ(st.provenance().order, "dissimilar");
  EXPECT_EQ(st.provenance().threshold, 0.25);
  EXPECT_EQ(st.provenance().calibration_hash, c.hash);
  EXPECT_EQ(st.provenance().target_layers, 2);
  EXPECT_EQ(st.provenance().score, r->selection.greedy.score);
  if (r->selection.greedy.stop == StopReason::kTargetReached) {
    EXPECT_EQ(st.sharing_layers(), 2);
  }
  // The first pair tried is the most dissimilar one.
  double best = 0;
  for (int i = 1; i < 5; ++i) {
    for (int j = 0; j < i; ++j) best = std::max(best, r->distances.distance(i, j));
  }
  EXPECT_EQ(r->selection.greedy.trace[0].distance, best);
}

class SearchRequestTest : public KvSharerSearchTest {
 protected:
  static std::string WriteTemp(const std::string& name, const std::string& content) {
    const std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  static SearchRequest Good() {
    SearchRequest r;
    r.calibration_path = testing::Asset("tinystories-sample.txt");
    return r;
  }
  static void ExpectError(const SearchRequest& r, const std::string& message) {
    auto p = PrepareSearch(r, *model_, *tokenizer_);
    ASSERT_FALSE(p.ok()) << message;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(message));
  }
};

TEST_F(SearchRequestTest, AGoodRequestResolvesTheRatioAgainstTheLayerCount) {
  auto p = PrepareSearch(Good(), *model_, *tokenizer_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->options.target_layers, 1);  // round(0.25 * 5)
  // The default rule is the best measured one: nll, similar first, best-of-8, lazy.
  EXPECT_EQ(p->selection.method, SearchMethod::kNll);
  EXPECT_EQ(p->options.order, PairOrder::kSimilar);
  EXPECT_EQ(p->selection.best_of, 8);
  EXPECT_TRUE(p->selection.lazy);
  EXPECT_EQ(p->options.threshold, 0.5);
  EXPECT_EQ(p->calibration.samples, 30);
  EXPECT_EQ(p->calibration.tokens, 64);
  // Its forwards take one int8 digit per activation (docs/METHOD.md §4); a KV plan search's
  // take two, one for the logits.
  EXPECT_EQ(p->selection.activations, cpu::Activations::kInt8);
  EXPECT_EQ(SearchBackendOptions(2, p->selection).matmul.activations, cpu::Activations::kInt8);
  EXPECT_EQ(CalibrationActivationsNote(cpu::Activations::kInt8), "int8 activations");
  const CpuBackendOptions two = CalibrationBackendOptions(2, cpu::Activations::kInt8x2);
  EXPECT_EQ(two.matmul.activations, cpu::Activations::kInt8x2);
  EXPECT_EQ(two.logits_activations, cpu::Activations::kInt8);
  EXPECT_EQ(CalibrationActivationsNote(cpu::Activations::kInt8x2),
            "int8x2 activations (int8 for logits)");
  SearchRequest r = Good();
  // --method kvsharer alone is the paper's search: dissimilar first, the first acceptable
  // candidate, no laziness.
  r.method = "kvsharer";
  auto paper = PrepareSearch(r, *model_, *tokenizer_);
  ASSERT_TRUE(paper.ok()) << paper.status();
  EXPECT_EQ(paper->selection.method, SearchMethod::kKvSharer);
  EXPECT_EQ(paper->options.order, PairOrder::kDissimilar);
  EXPECT_EQ(paper->selection.best_of, 1);
  EXPECT_FALSE(paper->selection.lazy);
  EXPECT_EQ(paper->selection.activations, cpu::Activations::kF32);
  EXPECT_FALSE(SearchBackendOptions(2, paper->selection).logits_activations.has_value());
  EXPECT_EQ(CalibrationActivationsNote(cpu::Activations::kF32), "f32 activations");
  // Exact activations on request; the paper's search takes no other (a proto request names
  // the field as the proto spells it).
  SearchRequest exact = Good();
  exact.activations = cpu::Activations::kF32;
  EXPECT_EQ(PrepareSearch(exact, *model_, *tokenizer_)->selection.activations,
            cpu::Activations::kF32);
  SearchRequest refused = r;
  refused.activations = cpu::Activations::kInt8x2;
  refused.field_style = FieldStyle::kProtoField;
  ExpectError(refused,
              "activations int8x2: the paper's search (method kvsharer) measures with exact (f32) "
              "activations");
  // Given, the rule's fields win over the method's defaults.
  r.order = "similar";
  r.best_of = 3;
  r.lazy = true;
  auto given = PrepareSearch(r, *model_, *tokenizer_);
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_EQ(given->options.order, PairOrder::kSimilar);
  EXPECT_EQ(given->selection.best_of, 3);
  EXPECT_TRUE(given->selection.lazy);
  r = Good();
  r.target_ratio = 0.6;
  EXPECT_EQ(PrepareSearch(r, *model_, *tokenizer_)->options.target_layers, 3);
  r = Good();
  r.target_layers = 4;
  r.order = "random";
  r.seed = 3;
  auto q = PrepareSearch(r, *model_, *tokenizer_);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->options.target_layers, 4);
  EXPECT_EQ(q->options.order, PairOrder::kRandom);
  EXPECT_EQ(q->options.seed, 3u);
}

TEST_F(SearchRequestTest, EveryBadInputIsAnErrorNamingTheFlagValueAndLimit) {
  SearchRequest r = Good();
  r.calibration_path = "/nonexistent/wiki.txt";
  {
    auto p = PrepareSearch(r, *model_, *tokenizer_);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr("--calibration"));
    EXPECT_THAT(std::string(p.status().message()), HasSubstr("/nonexistent/wiki.txt"));
  }
  r.calibration_path = WriteTemp("empty.txt", "");
  ExpectError(r, "--calibration " + r.calibration_path + " is empty (0 bytes)");
  r.calibration_path = WriteTemp("blank.txt", "\n\n\n\n");
  ExpectError(r, "none of its 4 lines tokenises to any token");
  r.calibration_path = WriteTemp("short.txt", text_->substr(0, 2000));
  ExpectError(r,
              "tokenise to at least 64 tokens (BOS counted); the calibration set needs 30 "
              "such lines (--samples 30, --tokens 64)");

  auto with = [](auto edit) {
    SearchRequest q = Good();
    edit(q);
    return q;
  };
  ExpectError(with([](SearchRequest& q) { q.target_layers = 0; }),
              "--target-layers 0 must be >= 1");
  ExpectError(with([](SearchRequest& q) { q.target_layers = 5; }),
              "--target-layers 5 must be in [1, 4] (layer 0 always owns; 'stories260K' has 5");
  ExpectError(with([](SearchRequest& q) { q.target_ratio = 0.0; }),
              "--target-ratio 0 must be in (0, 1)");
  ExpectError(with([](SearchRequest& q) { q.target_ratio = 1.0; }),
              "--target-ratio 1 must be in (0, 1)");
  ExpectError(with([](SearchRequest& q) { q.target_ratio = 0.05; }),
              "--target-ratio 0.05 of 5 layers rounds to 0 sharing layers; must be in [1, 4]");
  ExpectError(with([](SearchRequest& q) { q.target_ratio = 0.95; }),
              "rounds to 5 sharing layers; must be in [1, 4]");
  ExpectError(with([](SearchRequest& q) {
                q.target_ratio = 0.5;
                q.target_layers = 2;
              }),
              "--target-layers 2 and --target-ratio 0.5: give one");
  ExpectError(with([](SearchRequest& q) { q.threshold = -1; }),
              "--threshold -1 must be in (-1, 1]");
  ExpectError(with([](SearchRequest& q) { q.threshold = 1.5; }),
              "--threshold 1.5 must be in (-1, 1]");
  ExpectError(with([](SearchRequest& q) { q.threshold = std::nan(""); }),
              "--threshold nan must be in (-1, 1]");
  ExpectError(with([](SearchRequest& q) { q.order = "cosine"; }),
              "--order 'cosine' is not one of dissimilar, similar, random");
  ExpectError(with([](SearchRequest& q) { q.calibration.samples = 0; }),
              "--samples 0 must be >= 1");
  ExpectError(with([](SearchRequest& q) { q.calibration.tokens = 0; }), "--tokens 0 must be >= 1");
  ExpectError(with([](SearchRequest& q) { q.calibration.tokens = 513; }),
              "--tokens 513 exceeds the context of 'stories260K' (512)");
  ExpectError(with([](SearchRequest& q) { q.calibration_path.clear(); }), "--calibration is empty");
}

TEST_F(SearchRequestTest, FlagsAreCheckedBeforeTheFileIsRead) {
  SearchRequest r = Good();
  r.calibration_path = "/nonexistent/wiki.txt";
  r.threshold = 2;
  auto checked = CheckSearchRequest(r);
  EXPECT_THAT(std::string(checked.status().message()), HasSubstr("--threshold 2"));
}

}  // namespace
}  // namespace kvshare
