// Quality on record (issue 12) on a real model (stories260K): the held-out slice is the text
// after the calibration lines, exactly; the meter's perplexities equal an independent engine's;
// the quality fields survive JSON and the wire; the calibration NLL of LossEvaluator equals a
// double-precision naive forward, its cosine equals CosineEvaluator's, and its incremental
// scores equal a fresh evaluation; RunStrategySearch keeps the paper's search exact and
// records every rule's parameters and the calibration score.
#include "search_service/heldout_quality.h"

#include <cmath>

#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/cosine_evaluator.h"
#include "search_service/heldout_baseline_cache.h"
#include "search_service/loss_evaluator.h"
#include "search_service/strategy_search.h"
#include "tests/support/naive_llama.h"
#include "tests/support/paper_search.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

class QualityTest : public ::testing::Test {
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
  static std::shared_ptr<const SharingStrategy> Strategy(std::vector<int> kv) {
    auto st = SharingStrategy::Create(std::move(kv), model_->fingerprint());
    EXPECT_TRUE(st.ok()) << st.status();
    return std::make_shared<const SharingStrategy>(std::move(*st));
  }
  // The held-out slice after a 30 x 64 calibration set: `tokens` targets, `context`-token windows.
  static absl::StatusOr<HeldoutSlice> SliceAfterCalibration(int64_t tokens, int context) {
    HeldoutOptions o;
    o.tokens = tokens;
    o.context = context;
    return BuildHeldoutSlice(*text_, *tokenizer_, LastCalibrationLine(Calibration(30, 64)), o, "t");
  }
  // The text from 1-based line `line` on.
  static std::string FromLine(int line) {
    size_t offset = 0;
    for (int l = 1; l < line; ++l) offset = text_->find('\n', offset) + 1;
    return text_->substr(offset);
  }

  static Model* model_;
  static Tokenizer* tokenizer_;
  static std::string* text_;
};
Model* QualityTest::model_ = nullptr;
Tokenizer* QualityTest::tokenizer_ = nullptr;
std::string* QualityTest::text_ = nullptr;

TEST_F(QualityTest, TheHeldoutSliceIsTheTextAfterTheLastCalibrationLine) {
  const CalibrationSet c = Calibration(30, 64);
  const int last = LastCalibrationLine(c);
  ASSERT_EQ(last, c.source_lines.back());
  HeldoutOptions o;
  o.tokens = 2000;
  o.context = 256;
  auto slice = BuildHeldoutSlice(*text_, *tokenizer_, last, o, "tinystories-sample.txt");
  ASSERT_TRUE(slice.ok()) << slice.status();
  EXPECT_EQ(slice->first_line, last + 1);
  EXPECT_EQ(slice->targets(), 2000);
  EXPECT_EQ(slice->context, 256);
  ASSERT_EQ(slice->ids.size(), 2001u);
  EXPECT_EQ(slice->ids[0], tokenizer_->bos_id());
  const std::vector<int32_t> want = tokenizer_->Encode(FromLine(last + 1), false);
  ASSERT_GE(want.size(), 2000u);
  EXPECT_EQ(std::vector<int32_t>(slice->ids.begin() + 1, slice->ids.end()),
            std::vector<int32_t>(want.begin(), want.begin() + 2000));
  // Disjoint: every calibration line comes before the slice's first line.
  for (int line : c.source_lines) EXPECT_LT(line, slice->first_line);
  // The hash names the ids and the window length.
  auto again = BuildHeldoutSlice(*text_, *tokenizer_, last, o, "t");
  EXPECT_EQ(again->hash, slice->hash);
  o.context = 128;
  EXPECT_NE(BuildHeldoutSlice(*text_, *tokenizer_, last, o, "t")->hash, slice->hash);
}

TEST_F(QualityTest, ASliceThatCannotBeHadIsAnErrorNotAShorterSlice) {
  HeldoutOptions o;
  o.tokens = 0;
  auto s = BuildHeldoutSlice(*text_, *tokenizer_, 0, o, "t");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("--heldout-tokens 0 must be >= 1"));
  o.tokens = 100;
  o.context = 1;
  s = BuildHeldoutSlice(*text_, *tokenizer_, 0, o, "t");
  EXPECT_THAT(s.status().message(), HasSubstr("--heldout-context 1 must be >= 2"));
  o.context = 64;
  const std::string short_text = "Once upon a time.\nThere was a cat.\n";
  s = BuildHeldoutSlice(short_text, *tokenizer_, 1, o, "short.txt");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.status().message(), HasSubstr("short.txt from line 2 has"));
  EXPECT_THAT(s.status().message(), HasSubstr("--heldout-tokens 100 asked for"));
  s = BuildHeldoutSlice(short_text, *tokenizer_, 5, o, "short.txt");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.status().message(), HasSubstr("ends before line 6"));
}

TEST_F(QualityTest, TheMeterScoresAsAnIndependentEngineDoes) {
  auto slice = SliceAfterCalibration(1500, 200);
  ASSERT_TRUE(slice.ok());
  const std::vector<int32_t> ids = slice->ids;
  auto meter = QualityMeter::Create(*model_, std::move(*slice), 1);
  ASSERT_TRUE(meter.ok()) << meter.status();

  auto engine = Engine::Create(*model_, MakeCpuBackend(2));
  ASSERT_TRUE(engine.ok());
  PerplexityOptions po;
  po.context = 200;
  po.stride = 200;
  auto base = EvaluatePerplexity(**engine, ids, po);
  ASSERT_TRUE(base.ok());
  EXPECT_NEAR((*meter)->baseline().mean_nll, base->mean_nll, 1e-9);
  EXPECT_EQ((*meter)->baseline().tokens_scored, 1500);

  auto identity = (*meter)->Measure(nullptr, 1.0);
  ASSERT_TRUE(identity.ok());
  EXPECT_DOUBLE_EQ(identity->nll_increase(), 0.0);

  auto shared = Strategy({0, 1, 1, 3, 3});
  po.strategy = shared;
  auto want = EvaluatePerplexity(**engine, ids, po);
  ASSERT_TRUE(want.ok());
  auto q = (*meter)->Measure(shared, 0.875);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_NEAR(q->heldout_nll, want->mean_nll, 1e-9);
  EXPECT_NEAR(q->baseline_nll, base->mean_nll, 1e-9);
  EXPECT_GT(q->nll_increase(), 0.0);
  EXPECT_EQ(q->heldout_tokens, 1500);
  EXPECT_EQ(q->context, 200);
  EXPECT_EQ(q->heldout_hash, (*meter)->slice().hash);
  EXPECT_DOUBLE_EQ(q->calibration_score, 0.875);

  // Lanes (an engine per thread, perplexity.h) change the wall time only: the figures are the
  // one-engine meter's bit for bit.
  auto lanes = QualityMeter::Create(*model_, (*meter)->slice(), 3);
  ASSERT_TRUE(lanes.ok()) << lanes.status();
  EXPECT_EQ((*meter)->lanes(), 1);
  EXPECT_EQ((*lanes)->lanes(), 3);
  EXPECT_EQ((*lanes)->baseline().window_nll_sums, (*meter)->baseline().window_nll_sums);
  auto q3 = (*lanes)->Measure(shared, 0.875);
  ASSERT_TRUE(q3.ok()) << q3.status();
  EXPECT_EQ(q3->heldout_nll, q->heldout_nll);

  // A strategy of another model is refused.
  auto other = SharingStrategy::Create({0, 0, 2, 3, 4}, "another-model");
  ASSERT_TRUE(other.ok());
  auto bad = (*meter)->Measure(std::make_shared<const SharingStrategy>(*other), 1.0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(QualityTest, TheUnsharedPassIsKeptForMetersOfTheSameKey) {
  auto slice = SliceAfterCalibration(1000, 200);
  ASSERT_TRUE(slice.ok());
  std::vector<bool> lookups;
  HeldoutBaselineCache cache(/*capacity=*/2, [&](bool hit) { lookups.push_back(hit); });
  auto make = [&](const HeldoutSlice& s, int threads, int block, cpu::Activations a) {
    auto m = QualityMeter::Create(*model_, s, threads, nullptr, block, a, &cache);
    EXPECT_TRUE(m.ok()) << m.status();
    return std::move(*m);
  };
  const auto f32 = cpu::Activations::kF32;
  auto first = make(*slice, 1, 16, f32);
  EXPECT_FALSE(first->baseline_cached());
  // Another thread count is the same key (the figures do not depend on it); the kept pass is
  // the first meter's bit for bit, and so is every figure measured against it.
  auto second = make(*slice, 2, 16, f32);
  EXPECT_TRUE(second->baseline_cached());
  EXPECT_EQ(second->baseline().window_nll_sums, first->baseline().window_nll_sums);
  EXPECT_EQ(second->baseline().mean_nll, first->baseline().mean_nll);
  auto shared = Strategy({0, 1, 1, 3, 3});
  auto q1 = first->Measure(shared, 1.0), q2 = second->Measure(shared, 1.0);
  ASSERT_TRUE(q1.ok() && q2.ok());
  EXPECT_EQ(q2->heldout_nll, q1->heldout_nll);
  EXPECT_EQ(q2->baseline_nll, q1->baseline_nll);
  EXPECT_EQ(cache.hits(), 1);
  EXPECT_EQ(cache.misses(), 1);
  EXPECT_EQ(lookups, (std::vector<bool>{false, true}));

  // What the figures depend on is in the key: the block size, the activations, the slice.
  EXPECT_FALSE(make(*slice, 1, 32, f32)->baseline_cached());
  EXPECT_FALSE(make(*slice, 1, 16, cpu::Activations::kInt8x2)->baseline_cached());
  auto other = SliceAfterCalibration(600, 200);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(HeldoutBaselineCache::Key(*model_, *other, 16, f32),
            HeldoutBaselineCache::Key(*model_, *slice, 16, f32));
  // Capacity 2: the two newest keys stay (int8x2 and the 32-token blocks), the first went.
  EXPECT_TRUE(make(*slice, 1, 32, f32)->baseline_cached());
  EXPECT_FALSE(make(*slice, 1, 16, f32)->baseline_cached());

  // A cancelled pass is not kept.
  std::atomic<bool> cancel{true};
  auto cancelled = QualityMeter::Create(*model_, *other, 1, &cancel, 16, f32, &cache);
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(make(*other, 1, 16, f32)->baseline_cached());
}

TEST_F(QualityTest, WindowsRunWholeWhereRowsDependOnTheirStep) {
  // stories260K's fp32 weights go through OpenBLAS, whose tiling follows the step's rows: a
  // window run as its first block and the rest would not score what it scores in one step, so
  // the meter keeps no window prefixes (an f16 plan at 16-token blocks would otherwise have
  // them; tests/engine/window_prefixes_test.cc holds them exact where they are kept) and its
  // figures are an independent engine's.
  auto slice = SliceAfterCalibration(1000, 200);
  ASSERT_TRUE(slice.ok());
  for (cpu::Activations a : {cpu::Activations::kF32, cpu::Activations::kInt8x2}) {
    auto meter = QualityMeter::Create(*model_, *slice, 2, nullptr, /*block_tokens=*/16, a);
    ASSERT_TRUE(meter.ok()) << meter.status();
    auto plan = Strategy({0, 1, 1, 3, 4})->WithKvTypes(std::vector<KvType>(5, KvType::kF16));
    ASSERT_TRUE(plan.ok()) << plan.status();
    const auto f16 = std::make_shared<const SharingStrategy>(*plan);
    auto got = (*meter)->Perplexity(f16);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ((*meter)->kept_prefixes(), 0);
    EngineOptions eo;
    eo.block_tokens = 16;
    eo.max_step_rows = 200;
    CpuBackendOptions cpu;
    cpu.threads = 1;
    cpu.matmul.activations = a;
    auto engine = Engine::Create(*model_, MakeCpuBackend(cpu), eo);
    ASSERT_TRUE(engine.ok());
    PerplexityOptions po;
    po.context = 200;
    po.stride = 200;
    po.strategy = f16;
    auto whole = EvaluatePerplexity(**engine, slice->ids, po);
    ASSERT_TRUE(whole.ok());
    EXPECT_EQ(got->window_nll_sums, whole->window_nll_sums) << cpu::ActivationsName(a);
  }
}

// RejectEarly against hand-computed figures: per-window increases d = 0, 1, 0, 1, ... (100
// targets each) over the first 8 of a slice's windows have mean 0.5 and sample sd sqrt(2/7) =
// 0.53452. Of 16 windows the whole-slice mean is predicted with standard error
// 0.53452 sqrt(8 / (16 * 8)) = 0.13363, so mean - 3 se = 0.09911; of 800 windows (nearly the
// plain sd / sqrt(8) = 0.18898) 0.18898 sqrt(792/800) = 0.18803, mean - 3 se = -0.06410; of 8
// (the slice read) the mean itself.
TEST(EarlyRejectTest, StopsWhenTheMeanLessZStandardErrorsIsOverTheBudget) {
  PerplexityResult plan;
  for (int w = 0; w < 8; ++w) {
    plan.window_targets.push_back(100);
    plan.window_nll_sums.push_back(300.0 + w + (w % 2 == 1 ? 100.0 : 0.0));
  }
  auto slice = [](int windows) {
    PerplexityResult base;
    for (int w = 0; w < windows; ++w) {
      base.window_targets.push_back(100);
      base.window_nll_sums.push_back(300.0 + w);
    }
    return base;
  };
  const PerplexityResult base = slice(16);
  EXPECT_TRUE(RejectEarly(plan, base, {0.0990}));
  EXPECT_FALSE(RejectEarly(plan, base, {0.0992}));
  EXPECT_FALSE(RejectEarly(plan, base, {0.0990, 9}));       // fewer windows than min_units
  EXPECT_TRUE(RejectEarly(plan, base, {0.4331, 8, 0.5}));   // z = 0.5: 0.5 - 0.06682
  EXPECT_FALSE(RejectEarly(plan, base, {0.4332, 8, 0.5}));  // 0.43318
  EXPECT_TRUE(RejectEarly(plan, slice(800), {-0.0642}));
  EXPECT_FALSE(RejectEarly(plan, slice(800), {-0.0640}));
  EXPECT_TRUE(RejectEarly(plan, slice(8), {0.4999}));
  EXPECT_FALSE(RejectEarly(plan, slice(8), {0.5001}));
  EXPECT_NEAR(NllIncreaseOver(plan, base), 0.5, 1e-12);
  // Constant increases have no spread: any excess is beyond doubt.
  for (int w = 0; w < 8; ++w) plan.window_nll_sums[w] = base.window_nll_sums[w] + 1.0;
  EXPECT_TRUE(RejectEarly(plan, base, {0.0099}));
  EXPECT_FALSE(RejectEarly(plan, base, {0.0101}));
}

// The meter's early stop reads a prefix of the windows, and the increase it reports is the
// prefix's (from an independent full pass's window sums); without a reachable budget it reads
// every window.
TEST_F(QualityTest, AnEarlyRejectReadsAPrefixAndReportsItsIncrease) {
  auto slice =
      SliceAfterCalibration(3000, 100);  // 30 windows: 100-token strides over BOS + 3000 tokens
  ASSERT_TRUE(slice.ok());
  const std::vector<int32_t> ids = slice->ids;
  auto meter = QualityMeter::Create(*model_, std::move(*slice), 1);
  ASSERT_TRUE(meter.ok()) << meter.status();
  const auto shared = Strategy({0, 1, 1, 3, 3});

  auto engine = Engine::Create(*model_, MakeCpuBackend(2));
  ASSERT_TRUE(engine.ok());
  PerplexityOptions po;
  po.context = 100;
  po.stride = 100;
  po.strategy = shared;
  auto full = EvaluatePerplexity(**engine, ids, po);
  ASSERT_TRUE(full.ok());
  ASSERT_EQ(full->window_nll_sums.size(), 30u);
  const double increase = full->mean_nll - (*meter)->baseline().mean_nll;
  ASSERT_GT(increase, 0.05);

  const EarlyReject half{increase / 2};
  auto early = (*meter)->Perplexity(shared, &half);
  ASSERT_TRUE(early.ok()) << early.status();
  const size_t read = early->window_nll_sums.size();
  EXPECT_GE(read, 8u);
  EXPECT_LT(read, 30u);
  int64_t targets = 0;
  double plan = 0, base = 0;
  for (size_t w = 0; w < read; ++w) {
    targets += full->window_targets[w];
    plan += full->window_nll_sums[w];
    base += (*meter)->baseline().window_nll_sums[w];
  }
  EXPECT_EQ(early->tokens_scored, targets);
  EXPECT_NEAR(NllIncreaseOver(*early, (*meter)->baseline()), (plan - base) / targets, 1e-9);
  EXPECT_GT(NllIncreaseOver(*early, (*meter)->baseline()), increase / 2);
  // Four lanes stop at the same window (inside a round: the later ones are dropped).
  auto lanes = QualityMeter::Create(*model_, (*meter)->slice(), 4);
  ASSERT_TRUE(lanes.ok()) << lanes.status();
  auto early4 = (*lanes)->Perplexity(shared, &half);
  ASSERT_TRUE(early4.ok()) << early4.status();
  EXPECT_EQ(early4->window_nll_sums, early->window_nll_sums);

  const EarlyReject unreachable{2 * increase};
  auto whole = (*meter)->Perplexity(shared, &unreachable);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->tokens_scored, 3000);
  EXPECT_NEAR(whole->mean_nll, full->mean_nll, 1e-9);
}

TEST_F(QualityTest, QualityFieldsSurviveJsonAndTheWire) {
  auto st = SharingStrategy::Create({0, 1, 1, 3, 3}, model_->fingerprint());
  ASSERT_TRUE(st.ok());
  // Unmeasured: no quality object in the file.
  EXPECT_EQ(st->ToJson().find("quality"), std::string::npos);
  StrategyQuality q;
  q.heldout_nll = std::log(12.5);
  q.baseline_nll = std::log(10.0);
  q.heldout_tokens = 16384;
  q.context = 512;
  q.heldout_hash = "abc123";
  q.calibration_score = 0.93;
  StrategyProvenance& p = st->provenance();
  RecordQuality(q, &p);
  p.method = "nll";
  p.best_of = 8;
  p.max_nll_increase = 0.25;
  EXPECT_NEAR(p.heldout_ppl, 12.5, 1e-12);
  EXPECT_NEAR(p.baseline_ppl, 10.0, 1e-12);
  EXPECT_NEAR(p.heldout_nll_increase(), std::log(1.25), 1e-12);

  auto check = [&](const StrategyProvenance& got) {
    EXPECT_EQ(got.method, "nll");
    EXPECT_EQ(got.best_of, 8);
    EXPECT_DOUBLE_EQ(got.max_nll_increase, 0.25);
    EXPECT_TRUE(got.has_quality());
    EXPECT_DOUBLE_EQ(got.heldout_ppl, p.heldout_ppl);
    EXPECT_DOUBLE_EQ(got.baseline_ppl, p.baseline_ppl);
    EXPECT_EQ(got.heldout_tokens, 16384);
    EXPECT_EQ(got.heldout_context, 512);
    EXPECT_EQ(got.heldout_hash, "abc123");
    EXPECT_DOUBLE_EQ(got.calibration_score, 0.93);
  };
  auto from_json = SharingStrategy::FromJson(st->ToJson());
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  check(from_json->provenance());
  EXPECT_EQ(from_json->id(), st->id());  // quality is provenance, not content

  v1::SharingStrategy msg;
  ToProto(*st, &msg);
  EXPECT_TRUE(msg.provenance().has_quality());
  auto from_wire = FromProto(msg);
  ASSERT_TRUE(from_wire.ok()) << from_wire.status();
  check(from_wire->provenance());

  // A file written before these fields existed still reads, unmeasured.
  auto plain = SharingStrategy::Create({0, 1, 1, 3, 3}, model_->fingerprint());
  auto old = SharingStrategy::FromJson(plain->ToJson());
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(old->provenance().has_quality());
  EXPECT_EQ(old->provenance().best_of, 0);
}

// -log softmax(logits)[target] in double.
double NaiveNll(const testing::Vec& logits, int target) {
  double m = logits[0];
  for (double v : logits) m = std::max(m, v);
  double s = 0;
  for (double v : logits) s += std::exp(v - m);
  return m + std::log(s) - logits[target];
}

TEST_F(QualityTest, CalibrationNllAndCosineEqualIndependentReferences) {
  const CalibrationSet c = Calibration(6, 40);
  auto backend = MakeCpuBackend(2);
  auto transformer = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  ASSERT_TRUE(transformer.ok());
  auto loss = LossEvaluator::Create(**transformer, c, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(loss.ok()) << loss.status();
  auto cosine = CosineEvaluator::Create(**transformer, c);
  ASSERT_TRUE(cosine.ok());

  auto naive_nll = [&](const std::vector<int>& kv) {
    double total = 0;
    for (int s = 0; s < c.samples; ++s) {
      const std::vector<int32_t> ids(c.sample(s), c.sample(s) + c.tokens);
      const std::vector<testing::Vec> logits = testing::NaiveForward(*model_, kv, ids);
      for (int t = 0; t + 1 < c.tokens; ++t) total += NaiveNll(logits[t], ids[t + 1]);
    }
    return total / (c.samples * (c.tokens - 1));
  };
  EXPECT_NEAR((*loss)->unshared().nll, naive_nll({0, 1, 2, 3, 4}), 1e-4);
  EXPECT_DOUBLE_EQ((*loss)->unshared().cosine, 1.0);

  for (const std::vector<int>& kv :
       std::vector<std::vector<int>>{{0, 1, 2, 3, 3}, {0, 1, 1, 3, 4}, {0, 0, 2, 2, 0}}) {
    int first = 1;
    while (kv[first] == first) ++first;
    auto score = (*loss)->Score(kv, first);
    ASSERT_TRUE(score.ok()) << score.status();
    const double nll = naive_nll(kv);
    EXPECT_NEAR((*loss)->last().nll, nll, 1e-4);
    EXPECT_NEAR(*score, -(nll - (*loss)->unshared().nll), 2e-4);
    auto cos = (*cosine)->Score(kv, first);
    ASSERT_TRUE(cos.ok());
    EXPECT_NEAR((*loss)->last().cosine, *cos, 1e-12);
  }
}

// A plan's calibration scoring with an early reject stops after a batch of samples (here 4 per
// batch) once over the budget beyond doubt; its figures are those of the samples run (against
// the naive forward), it cannot be accepted without running in full, and a budget it cannot
// exceed runs every sample.
TEST_F(QualityTest, APlanScoringStoppedEarlyCoversAPrefixOfTheSamples) {
  const CalibrationSet c = Calibration(12, 40);
  auto backend = MakeCpuBackend(2);
  auto transformer = Transformer::Create(*model_, *backend, 4 * c.tokens);
  ASSERT_TRUE(transformer.ok());
  auto loss = LossEvaluator::Create(**transformer, c, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(loss.ok()) << loss.status();
  const std::vector<int> kv = {0, 1, 1, 3, 3};
  const std::vector<KvType> f32(5, KvType::kF32);
  auto naive_nll = [&](const std::vector<int>& strategy, int samples) {
    double total = 0;
    for (int s = 0; s < samples; ++s) {
      const std::vector<int32_t> ids(c.sample(s), c.sample(s) + c.tokens);
      const std::vector<testing::Vec> logits = testing::NaiveForward(*model_, strategy, ids);
      for (int t = 0; t + 1 < c.tokens; ++t) total += NaiveNll(logits[t], ids[t + 1]);
    }
    return total / (samples * (c.tokens - 1));
  };
  auto full = (*loss)->ScorePlan(kv, f32, 2);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->samples, 12);
  ASSERT_GT(full->nll_increase(), 0.05);

  const EarlyReject reject{full->nll_increase() / 4, 4};
  auto early = (*loss)->ScorePlan(kv, f32, 2, &reject);
  ASSERT_TRUE(early.ok()) << early.status();
  ASSERT_LT(early->samples, 12);
  EXPECT_EQ(early->samples % 4, 0);
  EXPECT_NEAR(early->nll, naive_nll(kv, early->samples), 1e-4);
  EXPECT_NEAR(early->unshared_nll, naive_nll({0, 1, 2, 3, 4}, early->samples), 1e-4);
  EXPECT_GT(early->nll_increase(), reject.above_nats);
  // Accepting it runs it again over every sample, and keeps that run's loss as the accepted
  // plan's (the unshared model's until then).
  EXPECT_EQ((*loss)->accepted_loss().cosine, 1.0);
  EXPECT_EQ((*loss)->accepted_loss().nll, (*loss)->unshared().nll);
  ASSERT_TRUE((*loss)->AcceptPlan(kv, f32, 2).ok());
  EXPECT_EQ((*loss)->last().samples, 12);
  EXPECT_NEAR((*loss)->last().nll, full->nll, 1e-9);
  EXPECT_EQ((*loss)->accepted_loss().samples, 12);
  EXPECT_NEAR((*loss)->accepted_loss().nll, full->nll, 1e-9);
  EXPECT_NEAR((*loss)->accepted_loss().cosine, full->cosine, 1e-9);

  const EarlyReject unreachable{1e9, 4};
  auto again = (*loss)->ScorePlan({0, 1, 1, 3, 3}, f32, 4, &unreachable);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->samples, 12);
}

TEST_F(QualityTest, IncrementalScoresEqualAFreshEvaluation) {
  const CalibrationSet c = Calibration(8, 32);
  auto backend = MakeCpuBackend(1);
  auto transformer = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  auto e = LossEvaluator::Create(**transformer, c, CandidateMetric::kNllIncrease);
  ASSERT_TRUE(e.ok());
  // Accept 2 -> 1, then score 4 -> 3 from layer 4 on the cached states.
  ASSERT_TRUE((*e)->Score({0, 1, 1, 3, 4}, 2).ok());
  ASSERT_TRUE((*e)->Accept({0, 1, 1, 3, 4}, 2).ok());
  auto incremental = (*e)->Score({0, 1, 1, 3, 3}, 4);
  ASSERT_TRUE(incremental.ok());
  const CalibrationLoss got = (*e)->last();

  auto transformer2 = Transformer::Create(*model_, *backend, SearchMaxRows(c));
  auto fresh = LossEvaluator::Create(**transformer2, c, CandidateMetric::kCosine);
  ASSERT_TRUE(fresh.ok());
  auto want = (*fresh)->Measure({0, 1, 1, 3, 3});
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_DOUBLE_EQ(got.nll, want->nll);
  EXPECT_DOUBLE_EQ(got.cosine, want->cosine);
  // Measure leaves the accepted strategy alone; the cosine metric returns the cosine.
  EXPECT_EQ((*fresh)->accepted(), (std::vector<int>{0, 1, 2, 3, 4}));
  auto cos = (*fresh)->Score({0, 1, 1, 3, 3}, 2);
  ASSERT_TRUE(cos.ok());
  EXPECT_DOUBLE_EQ(*cos, want->cosine);
  // A candidate that is not a step from the accepted strategy is refused.
  auto bad = (*e)->Score({0, 0, 2, 3, 4}, 3);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(QualityTest, ThePapersSearchStaysExactBehindTheRuleDriver) {
  const CalibrationSet c = Calibration(10, 32);
  auto backend = MakeCpuBackend(2);
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar}) {
    SelectionOptions s;
    s.greedy.order = order;
    s.greedy.target_layers = 3;
    auto paper = testing::PaperSearch(*model_, *backend, c, s.greedy);
    auto driver = RunStrategySearch(*model_, *backend, c, s);
    ASSERT_TRUE(paper.ok() && driver.ok());
    EXPECT_EQ(driver->strategy->kv_source(), paper->greedy.kv_source);
    ASSERT_EQ(driver->selection.greedy.trace.size(), paper->greedy.trace.size());
    for (size_t t = 0; t < paper->greedy.trace.size(); ++t) {
      EXPECT_EQ(driver->selection.greedy.trace[t].i, paper->greedy.trace[t].i);
      EXPECT_EQ(driver->selection.greedy.trace[t].j, paper->greedy.trace[t].j);
      EXPECT_EQ(driver->selection.greedy.trace[t].score, paper->greedy.trace[t].score);
    }
    EXPECT_EQ(driver->strategy->provenance().method, "kvsharer");
    EXPECT_EQ(driver->strategy->provenance().best_of, 1);
    EXPECT_DOUBLE_EQ(driver->calibration_score, paper->greedy.score);
    EXPECT_EQ(int(driver->accept_seconds.size()), paper->greedy.accepted);
    // Best-of-1 through the general path scores the same candidates with the same scores.
    s.lazy = true;  // lazy best-of-1 is best-of-1
    auto general = RunStrategySearch(*model_, *backend, c, s);
    ASSERT_TRUE(general.ok());
    EXPECT_EQ(general->strategy->kv_source(), paper->greedy.kv_source);
    EXPECT_EQ(general->selection.greedy.trace.size(), paper->greedy.trace.size());
  }
}

TEST_F(QualityTest, EveryRuleRecordsItsParametersAndTheCalibrationScore) {
  const CalibrationSet c = Calibration(10, 32);
  auto backend = MakeCpuBackend(2);
  SelectionOptions s;
  s.method = SearchMethod::kNll;
  s.greedy.order = PairOrder::kSimilar;
  s.greedy.target_layers = 2;
  s.best_of = 3;
  s.max_nll_increase = 5.0;
  auto r = RunStrategySearch(*model_, *backend, c, s);
  ASSERT_TRUE(r.ok()) << r.status();
  const StrategyProvenance& p = r->strategy->provenance();
  EXPECT_EQ(p.method, "nll");
  EXPECT_EQ(p.order, "similar");
  EXPECT_EQ(p.best_of, 3);
  EXPECT_DOUBLE_EQ(p.max_nll_increase, 5.0);
  EXPECT_EQ(p.target_layers, 2);
  EXPECT_EQ(p.calibration_hash, c.hash);
  EXPECT_EQ(r->strategy->sharing_layers(), 2);
  EXPECT_GT(p.calibration_score, 0.0);
  EXPECT_LT(p.calibration_score, 1.0);
  EXPECT_DOUBLE_EQ(r->calibration_score, p.calibration_score);
  // The score is minus the calibration NLL increase: negative, above -R.
  EXPECT_LT(p.score, 0.0);
  EXPECT_GT(p.score, -5.0);
  EXPECT_THAT(p.note, HasSubstr("best of 3"));
  ASSERT_EQ(r->accept_seconds.size(), 2u);
  EXPECT_LE(r->accept_seconds[0], r->accept_seconds[1]);
  // Its calibration score is the paper's cosine of the final strategy.
  auto cos = CalibrationCosine(*model_, *backend, c, r->strategy->kv_source());
  ASSERT_TRUE(cos.ok());
  EXPECT_NEAR(*cos, p.calibration_score, 1e-12);

  // Bad rules fail before any forward pass.
  s.best_of = 0;
  auto bad = RunStrategySearch(*model_, *backend, c, s);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("--best-of 0"));
}

TEST_F(QualityTest, TheNllRuleIsIdenticalAtOneAndTwoThreads) {
  const CalibrationSet c = Calibration(10, 32);
  SelectionOptions s;
  s.method = SearchMethod::kNll;
  s.greedy.order = PairOrder::kSimilar;
  s.greedy.target_layers = 3;
  s.best_of = 4;
  s.lazy = true;
  auto one = MakeCpuBackend(1), two = MakeCpuBackend(2);
  auto a = RunStrategySearch(*model_, *one, c, s);
  auto b = RunStrategySearch(*model_, *two, c, s);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->strategy->ToJson(), b->strategy->ToJson());
  ASSERT_EQ(a->selection.greedy.trace.size(), b->selection.greedy.trace.size());
  for (size_t t = 0; t < a->selection.greedy.trace.size(); ++t) {
    EXPECT_EQ(a->selection.greedy.trace[t].score, b->selection.greedy.trace[t].score) << t;
  }
}

}  // namespace
}  // namespace kvshare
