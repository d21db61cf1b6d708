// A KV plan search as a search service job (CreateSearchJobRequest.max_ppl_increase), in
// process over real gRPC on loopback, on stories260K: the job succeeds, publishes a strategy
// with per-layer KV types whose recorded held-out perplexity increase is within the budget,
// and that strategy is exactly what the library's plan search finds for the same request.
// Bad budgets are INVALID_ARGUMENT naming the field. A drop search (drop_attention, issue 18)
// runs as a job the same way: it publishes exactly what the library's drop search finds.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_format.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvshare/v1/search.grpc.pb.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/drop_search.h"
#include "search_service/heldout_quality.h"
#include "search_service/kv_plan_runner.h"
#include "search_service/projection_sets.h"
#include "search_service/search_request.h"
#include "search_service/server/search_server.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

constexpr int kHeldoutTokens = 1024, kHeldoutContext = 256;

class KvPlanJobTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new std::string(absl::StrFormat("%s/kv_plan_job_test.%d", ::testing::TempDir(), getpid()));
    std::filesystem::remove_all(*dir_);
    std::filesystem::create_directories(*dir_);
    const std::string catalog = *dir_ + "/catalog.json";
    std::ofstream(catalog) << absl::StrFormat(
        R"({"format": "kvshare.catalog.v1",
            "models": [{"name": "stories260K", "path": "%s", "format": "llama2c",
                        "tokenizer": "%s"}],
            "calibration_corpora": []})",
        testing::Asset("stories260K.bin"), testing::Asset("tok512.bin"));
    SearchServerOptions options;
    options.address = "127.0.0.1:0";
    options.data_dir = *dir_ + "/data";
    options.catalog_path = catalog;
    options.jobs.search_threads = 2;
    metrics_ = new SearchMetrics();
    auto server = SearchServer::Start(options, metrics_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
    text_ = new std::string(testing::ReadFileOrDie(testing::Asset("tinystories-sample.txt")));
  }
  static void TearDownTestSuite() {
    delete server_;
    delete metrics_;
    delete text_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override {
    jobs_ = v1::SearchService::NewStub(grpc::CreateChannel(
        absl::StrFormat("127.0.0.1:%d", server_->port()), grpc::InsecureChannelCredentials()));
  }
  static v1::CreateSearchJobRequest Plan(double budget) {
    v1::CreateSearchJobRequest r;
    r.set_model("stories260K");
    r.set_calibration_text(*text_);
    r.set_samples(30);
    r.set_tokens(64);
    r.set_max_ppl_increase(budget);
    r.set_heldout_tokens(kHeldoutTokens);
    r.set_heldout_context(kHeldoutContext);
    return r;
  }
  grpc::Status Create(const v1::CreateSearchJobRequest& r, v1::SearchJob* job) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return jobs_->CreateSearchJob(&context, r, job);
  }
  v1::SearchJob WaitForEnd(const std::string& job_id) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    v1::WatchSearchJobRequest request;
    request.set_job_id(job_id);
    auto reader = jobs_->WatchSearchJob(&context, request);
    v1::SearchJobUpdate u, last;
    while (reader->Read(&u)) last = u;
    EXPECT_TRUE(reader->Finish().ok());
    return last.job();
  }

  // `r` with publish set, run to its end; the job must succeed.
  v1::SearchJob RunPublished(v1::CreateSearchJobRequest r) {
    r.set_publish(true);
    v1::SearchJob job;
    EXPECT_TRUE(Create(r, &job).ok());
    const v1::SearchJob done = WaitForEnd(job.job_id());
    EXPECT_EQ(done.state(), v1::SEARCH_JOB_SUCCEEDED) << done.error();
    return done;
  }
  // What the service prepares for request `r` on the suite's text, done here with the library
  // (the slice stays empty when a step fails).
  struct Local {
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> tokenizer;
    PreparedSearch prepared;
    HeldoutSlice slice;
  };
  static Local Prepare(SearchRequest r) {
    Local l;
    auto model = Model::Load(testing::Asset("stories260K.bin"));
    EXPECT_TRUE(model.ok());
    if (!model.ok()) return l;
    l.model = std::move(*model);
    auto tokenizer = LoadTokenizerForModel(*l.model, testing::Asset("tok512.bin"));
    EXPECT_TRUE(tokenizer.ok());
    if (!tokenizer.ok()) return l;
    l.tokenizer = std::move(*tokenizer);
    r.calibration_text = *text_;
    r.calibration_source = "test";
    auto prepared = PrepareSearch(r, *l.model, *l.tokenizer);
    EXPECT_TRUE(prepared.ok()) << prepared.status();
    if (!prepared.ok()) return l;
    l.prepared = std::move(*prepared);
    HeldoutOptions ho;
    ho.tokens = kHeldoutTokens;
    ho.context = kHeldoutContext;
    auto slice = CalibrationHeldoutSlice(*text_, l.prepared.calibration, *l.tokenizer,
                                         l.model->config(), ho, "test");
    EXPECT_TRUE(slice.ok()) << slice.status();
    if (slice.ok()) l.slice = std::move(*slice);
    return l;
  }

  static inline std::string* dir_ = nullptr;
  static inline SearchServer* server_ = nullptr;
  static inline SearchMetrics* metrics_ = nullptr;
  static inline std::string* text_ = nullptr;
  std::unique_ptr<v1::SearchService::Stub> jobs_;
};

TEST_F(KvPlanJobTest, PublishesThePlanTheLibraryFindsWithinTheBudget) {
  const v1::SearchJob done = RunPublished(Plan(2.0));
  ASSERT_TRUE(done.result().has_published()) << done.error();
  auto strategy = FromProto(done.result().strategy());
  ASSERT_TRUE(strategy.ok()) << strategy.status();
  EXPECT_TRUE(strategy->has_kv_types());
  const StrategyProvenance& p = strategy->provenance();
  EXPECT_EQ(p.method, "kvplan");
  ASSERT_TRUE(p.has_quality());
  EXPECT_EQ(p.heldout_tokens, kHeldoutTokens);
  EXPECT_LE(p.heldout_ppl / p.baseline_ppl, 1.02);
  EXPECT_EQ(done.result().published().strategy().id(), strategy->id());

  // The library, on this thread, from the same request.
  SearchRequest r;
  r.max_ppl_increase = 2.0;
  r.best_of = KvPlanOptions{}.share_best_of;
  const Local l = Prepare(r);
  ASSERT_FALSE(l.slice.ids.empty());  // every step above succeeded
  ASSERT_TRUE(l.prepared.plan.has_value());
  // stories260K's head_dim is 8: int4 (32-channel groups) is not offered.
  EXPECT_EQ(l.prepared.plan->lower_types, std::vector<KvType>{KvType::kInt8});
  auto local =
      RunKvPlanStrategySearch(*l.model, l.prepared.calibration, l.slice, 2, *l.prepared.plan);
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(local->strategy->id(), strategy->id());
  EXPECT_EQ(local->strategy->CanonicalString(), strategy->CanonicalString());
  EXPECT_DOUBLE_EQ(local->strategy->provenance().heldout_ppl, p.heldout_ppl);
}

TEST_F(KvPlanJobTest, LaterJobsOfTheSameSliceMeasureAgainstTheKeptUnshared) {
  // Every job measures against the unshared model's held-out pass; the service runs it once per
  // model, slice, block size and activations (heldout_baseline_cache.h) and later jobs take it.
  // Whether the first job here computes it depends on the tests before it: count from now.
  auto computed = [] { return metrics_->heldout_baselines_computed.Value(); };
  auto cached = [] { return metrics_->heldout_baselines_cached.Value(); };
  const double computed0 = computed(), cached0 = cached();
  const v1::SearchJob first = RunPublished(Plan(5.0));
  EXPECT_EQ(computed() + cached(), computed0 + cached0 + 1);
  const double computed1 = computed();
  const v1::SearchJob second = RunPublished(Plan(1.0));
  EXPECT_EQ(computed(), computed1);
  EXPECT_EQ(cached(), cached0 + (computed1 - computed0 == 1 ? 1 : 2));
  auto a = FromProto(first.result().strategy());
  auto b = FromProto(second.result().strategy());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->provenance().baseline_ppl, b->provenance().baseline_ppl);
  EXPECT_EQ(a->provenance().heldout_hash, b->provenance().heldout_hash);

  // Another block size is another unshared pass (attention chunks by block).
  v1::CreateSearchJobRequest other = Plan(5.0);
  other.set_kv_block_tokens(32);
  RunPublished(other);
  EXPECT_EQ(computed(), computed1 + 1);
}

TEST_F(KvPlanJobTest, BadBudgetsAreInvalidArgumentNamingTheField) {
  v1::SearchJob job;
  grpc::Status s = Create(Plan(0), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("max_ppl_increase 0"));
  s = Create(Plan(5000), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("(0, 1000]"));
  v1::CreateSearchJobRequest r = Plan(2);
  r.set_heldout_tokens(0);
  s = Create(r, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("heldout_tokens > 0"));
  r = Plan(2);
  r.set_kv_block_tokens(0);
  s = Create(r, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("kv_block_tokens 0 must be in [1, 1024]"));
  r.clear_max_ppl_increase();
  r.set_kv_block_tokens(64);
  s = Create(r, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("kv_block_tokens: only with max_ppl_increase"));
}

TEST_F(KvPlanJobTest, ADropSearchJobPublishesWhatTheLibraryFinds) {
  v1::CreateSearchJobRequest request = Plan(2.0);
  request.clear_max_ppl_increase();
  request.set_target_layers(2);
  request.set_drop_attention(true);
  const v1::SearchJob done = RunPublished(request);
  ASSERT_TRUE(done.result().has_published()) << done.error();
  EXPECT_EQ(done.result().strategy().attention_dropped_size(), 2);
  auto strategy = FromProto(done.result().strategy(), [&](const ProjectionsHeader&) {
    return absl::StatusOr<std::shared_ptr<const OutputProjections>>(
        absl::UnimplementedError("not fetched here"));
  });
  const std::string id = done.result().strategy().id();
  EXPECT_EQ(done.result().published().strategy().id(), id);
  if (strategy.ok()) {
    EXPECT_EQ(strategy->provenance().method, "drop");
    EXPECT_TRUE(strategy->provenance().has_quality());
  }

  // The library, on this thread, from the same text: the sets after the held-out slice.
  SearchRequest r;
  r.target_layers = 2;
  const Local l = Prepare(r);
  ASSERT_FALSE(l.slice.ids.empty());  // every step above succeeded
  auto sets = BuildProjectionSets(
      *text_, *l.tokenizer,
      HeldoutEndLine(*text_, *l.tokenizer, l.slice.first_line - 1, l.slice.targets()),
      DropSetOptions(l.model->config().max_seq_len), "test");
  ASSERT_TRUE(sets.ok()) << sets.status();
  auto local = RunDropAsSearch(*l.model, *sets, 2, 2, /*substitutes=*/true, {});
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(local->strategy->attention_dropped(),
            std::vector<int>(done.result().strategy().attention_dropped().begin(),
                             done.result().strategy().attention_dropped().end()));
  EXPECT_EQ(local->strategy->id(), id);

  // Refused before a job exists, naming the fields.
  v1::CreateSearchJobRequest bad = request;
  bad.set_max_ppl_increase(2);
  v1::SearchJob job;
  grpc::Status s = Create(bad, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("drop_attention: not with max_ppl_increase"));
  bad = request;
  bad.set_drop_attention(false);
  bad.set_drop_substitutes(false);
  s = Create(bad, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("drop_substitutes: only with drop_attention"));
}

}  // namespace
}  // namespace kvshare
