// The search service end to end, in process, over real gRPC on loopback: SearchService jobs on
// real models (stories260K; SmolLM2-135M where a search must run long enough to be watched or
// cancelled), the StrategyRegistry under concurrent publishers, health, and every invalid
// request answered with the right code and a message naming the field.
#include "search_service/server/search_server.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "kvshare/v1/search.grpc.pb.h"
#include "proto/wire/search_job_wire.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/heldout_quality.h"
#include "search_service/strategy_search.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<grpc::Channel> Channel(int port, int client = 0) {
  grpc::ChannelArguments args;
  // A distinct argument per client: its own connection, not one shared subchannel.
  args.SetInt("kvshare.test.client", client);
  return grpc::CreateCustomChannel(absl::StrFormat("127.0.0.1:%d", port),
                                   grpc::InsecureChannelCredentials(), args);
}

std::unique_ptr<grpc::ClientContext> Context(int seconds = 60) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return context;
}

class SearchServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new std::string(
        absl::StrFormat("%s/search_server_test.%d", ::testing::TempDir(), getpid()));
    std::filesystem::remove_all(*data_dir_);
    std::filesystem::create_directories(*data_dir_);
    const std::string catalog = *data_dir_ + "/catalog.json";
    std::ofstream(catalog) << absl::StrFormat(
        R"({"format": "kvshare.catalog.v1",
            "models": [{"name": "stories260K", "path": "%s", "format": "llama2c",
                        "tokenizer": "%s"},
                       {"name": "smollm2", "path": "%s", "format": "gguf"}],
            "calibration_corpora": [{"name": "tinystories", "path": "%s"}]})",
        testing::Asset("stories260K.bin"), testing::Asset("tok512.bin"), testing::SmolLm2Path(),
        testing::Asset("tinystories-sample.txt"));
    SearchServerOptions options;
    options.address = "127.0.0.1:0";
    options.data_dir = *data_dir_ + "/data";
    options.catalog_path = catalog;
    options.jobs.max_concurrent_jobs = 1;  // a second job waits: the queue is observable
    options.jobs.max_queued_jobs = 4;
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
    std::filesystem::remove_all(*data_dir_);
    delete data_dir_;
  }

  void SetUp() override {
    jobs_ = v1::SearchService::NewStub(Channel(server_->port()));
    registry_ = v1::StrategyRegistry::NewStub(Channel(server_->port()));
  }

  // A small job on stories260K with the text inline.
  static v1::CreateSearchJobRequest Stories(int target_layers) {
    v1::CreateSearchJobRequest r;
    r.set_model("stories260K");
    r.set_calibration_text(*text_);
    r.set_samples(30);
    r.set_tokens(64);
    r.set_target_layers(target_layers);
    r.set_threshold(0.5);
    r.set_heldout_tokens(kHeldoutTokens);  // the quality on record, on a small slice
    return r;
  }
  static constexpr int kHeldoutTokens = 512;
  // A SmolLM2 job with a tiny calibration set: 435 pairs, each scored in milliseconds.
  static v1::CreateSearchJobRequest SmolLm2(double threshold, int target_layers) {
    v1::CreateSearchJobRequest r;
    r.set_model("smollm2");
    r.set_calibration_corpus("tinystories");
    r.set_samples(4);
    r.set_tokens(32);
    r.set_target_layers(target_layers);
    r.set_threshold(threshold);
    r.set_heldout_tokens(kHeldoutTokens);
    return r;
  }

  // The quality the library measures for `strategy` on the slice a job of `request` (inline
  // text, default heldout_context) measures on.
  static absl::StatusOr<StrategyQuality> LibraryQuality(
      const Model& model, const Tokenizer& tokenizer, const CalibrationSet& calibration,
      std::shared_ptr<const SharingStrategy> strategy, double calibration_score) {
    HeldoutOptions o;
    o.tokens = kHeldoutTokens;
    o.context = 512;
    auto slice = CalibrationHeldoutSlice(*text_, calibration, tokenizer, model.config(), o,
                                         "calibration_text", /*cli_flags=*/false);
    if (!slice.ok()) return slice.status();
    return MeasureHeldoutQuality(model, std::move(*slice), 2, std::move(strategy),
                                 calibration_score);
  }
  // The quality a job recorded equals the library's measurement.
  static void ExpectQuality(const v1::SharingStrategy& got, const StrategyQuality& want) {
    ASSERT_TRUE(got.provenance().has_quality());
    const v1::StrategyQuality& q = got.provenance().quality();
    EXPECT_EQ(q.heldout_tokens(), kHeldoutTokens);
    EXPECT_EQ(q.heldout_context(), 512);
    EXPECT_TRUE(std::isfinite(q.heldout_ppl())) << q.heldout_ppl();
    EXPECT_GT(q.heldout_ppl(), 1.0);
    EXPECT_EQ(q.heldout_ppl(), want.heldout_ppl());
    EXPECT_EQ(q.baseline_ppl(), want.baseline_ppl());
    EXPECT_EQ(q.heldout_hash(), want.heldout_hash);
  }

  absl::StatusOr<v1::SearchJob> Create(const v1::CreateSearchJobRequest& request) {
    v1::SearchJob job;
    grpc::Status s = jobs_->CreateSearchJob(Context(120).get(), request, &job);
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    return job;
  }

  // Every update of a watch, to the end of the stream.
  std::vector<v1::SearchJobUpdate> WatchToEnd(const std::string& job_id,
                                              grpc::Status* status = nullptr) {
    auto context = Context(300);
    v1::WatchSearchJobRequest request;
    request.set_job_id(job_id);
    auto reader = jobs_->WatchSearchJob(context.get(), request);
    std::vector<v1::SearchJobUpdate> updates;
    v1::SearchJobUpdate u;
    while (reader->Read(&u)) updates.push_back(u);
    grpc::Status s = reader->Finish();
    if (status != nullptr) *status = s;
    EXPECT_TRUE(status != nullptr || s.ok()) << s.error_message();
    return updates;
  }

  static inline std::string* data_dir_ = nullptr;
  static inline SearchMetrics* metrics_ = nullptr;
  static inline SearchServer* server_ = nullptr;
  static inline std::string* text_ = nullptr;
  std::unique_ptr<v1::SearchService::Stub> jobs_;
  std::unique_ptr<v1::StrategyRegistry::Stub> registry_;
};

TEST_F(SearchServerTest, AJobOnStories260KFindsWhatTheLibrarySearchFindsAndPublishesIt) {
  v1::CreateSearchJobRequest request = Stories(2);
  request.set_method("kvsharer");  // alone: the paper's search, as the library's below
  request.set_publish(true);
  auto job = Create(request);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::SEARCH_JOB_QUEUED);
  EXPECT_EQ(job->n_layers(), 5);
  EXPECT_EQ(job->request().calibration_text(), "");                  // not echoed back ...
  EXPECT_EQ(job->calibration_text_bytes(), int64_t(text_->size()));  // ... summarised
  const std::vector<v1::SearchJobUpdate> updates = WatchToEnd(job->job_id());
  ASSERT_FALSE(updates.empty());
  const v1::SearchJob& done = updates.back().job();
  ASSERT_EQ(done.state(), v1::SEARCH_JOB_SUCCEEDED) << done.error();

  // The same search through the library, on this thread.
  auto model = Model::Load(testing::Asset("stories260K.bin"));
  ASSERT_TRUE(model.ok());
  auto tokenizer = LoadTokenizerForModel(**model, testing::Asset("tok512.bin"));
  ASSERT_TRUE(tokenizer.ok());
  auto calibration = BuildCalibrationSet(*text_, **tokenizer, {30, 64}, "tinystories");
  ASSERT_TRUE(calibration.ok());
  SelectionOptions options;  // the paper's rule
  options.greedy.target_layers = 2;
  options.greedy.threshold = 0.5;
  auto backend = MakeCpuBackend(1);
  auto local = RunStrategySearch(**model, *backend, *calibration, options);
  ASSERT_TRUE(local.ok()) << local.status();

  auto remote = FromProto(done.result().strategy());
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(remote->kv_source(), local->strategy->kv_source());
  EXPECT_EQ(remote->id(), local->strategy->id());
  EXPECT_EQ(remote->provenance().score, local->strategy->provenance().score);
  EXPECT_EQ(remote->provenance().calibration_hash, calibration->hash);
  ASSERT_EQ(done.result().trace_size(), int(local->selection.greedy.trace.size()));
  for (int t = 0; t < done.result().trace_size(); ++t) {
    const PairTrial& want = local->selection.greedy.trace[t];
    const v1::PairTrial& got = done.result().trace(t);
    EXPECT_EQ(std::make_tuple(got.i(), got.j(), got.accepted()),
              std::make_tuple(want.i, want.j, want.accepted));
    EXPECT_EQ(got.score(), want.score);
    EXPECT_EQ(got.distance(), want.distance);
  }
  EXPECT_EQ(done.result().stop_reason(), StopReasonName(local->selection.greedy.stop));
  // The quality on record is the library's measurement on the same held-out slice.
  auto quality = LibraryQuality(**model, **tokenizer, *calibration, local->strategy, 0);
  ASSERT_TRUE(quality.ok()) << quality.status();
  ExpectQuality(done.result().strategy(), *quality);

  // Published: the registry has it, by id and by (model name, version).
  ASSERT_TRUE(done.result().has_published());
  const v1::StrategyRecord& published = done.result().published();
  EXPECT_EQ(published.source_job_id(), job->job_id());
  EXPECT_EQ(published.model_name(), "stories260K");
  v1::GetStrategyRequest get;
  get.mutable_model_version()->set_model("stories260K");
  get.mutable_model_version()->set_version(published.version());
  v1::StrategyRecord record;
  ASSERT_TRUE(registry_->GetStrategy(Context().get(), get, &record).ok());
  EXPECT_EQ(record.strategy().id(), local->strategy->id());
  ExpectQuality(record.strategy(), *quality);  // the registry record carries it too
  get.set_strategy_id(local->strategy->id());
  ASSERT_TRUE(registry_->GetStrategy(Context().get(), get, &record).ok());
  EXPECT_EQ(record.version(), published.version());
}

TEST_F(SearchServerTest, WatchStreamsProgressInOrderAndEndsWithTheResult) {
  auto job = Create(SmolLm2(0.5, 3));
  ASSERT_TRUE(job.ok()) << job.status();
  const std::vector<v1::SearchJobUpdate> updates = WatchToEnd(job->job_id());
  ASSERT_GE(updates.size(), 3u);
  int greedy_updates = 0;
  for (size_t k = 0; k < updates.size(); ++k) {
    const v1::SearchJob& j = updates[k].job();
    EXPECT_EQ(j.job_id(), job->job_id());
    greedy_updates += j.progress().phase() == v1::SEARCH_PHASE_GREEDY;
    if (k == 0) continue;
    const v1::SearchJob& before = updates[k - 1].job();
    EXPECT_GT(updates[k].sequence(), updates[k - 1].sequence());
    EXPECT_GE(int(j.state()), int(before.state()));  // QUEUED < RUNNING < SUCCEEDED
    EXPECT_GE(SearchPhaseRank(j.progress().phase()), SearchPhaseRank(before.progress().phase()));
    EXPECT_GE(SearchPhaseRank(j.progress().phase()), 1) << j.progress().phase();
    EXPECT_GE(j.progress().pairs_tried(), before.progress().pairs_tried());
    EXPECT_GE(j.progress().accepted(), before.progress().accepted());
    EXPECT_GE(j.progress().elapsed_seconds(), before.progress().elapsed_seconds());
    if (j.progress().phase() == v1::SEARCH_PHASE_GREEDY) {
      EXPECT_EQ(j.progress().pairs_total(), 435);
      EXPECT_EQ(j.progress().best_kv_source_size(), 30);
      EXPECT_EQ(j.progress().target_layers(), 3);
      if (j.progress().pairs_tried() > 0) {
        EXPECT_GE(j.progress().eta_seconds(), 0);
      }
    }
  }
  EXPECT_GE(greedy_updates, 1);
  // Nothing after the terminal snapshot, and it carries the result.
  const v1::SearchJob& last = updates.back().job();
  ASSERT_EQ(last.state(), v1::SEARCH_JOB_SUCCEEDED) << last.error();
  for (size_t k = 0; k + 1 < updates.size(); ++k) {
    EXPECT_NE(updates[k].job().state(), v1::SEARCH_JOB_SUCCEEDED);
  }
  EXPECT_EQ(last.progress().phase(), v1::SEARCH_PHASE_DONE);
  EXPECT_EQ(last.progress().sharing_layers(), 3);
  EXPECT_EQ(last.result().accepted(), 3);
  EXPECT_EQ(last.result().strategy().kv_source_size(), 30);
  EXPECT_EQ(last.progress().pairs_tried(), last.result().pairs_scored());
  ASSERT_TRUE(last.result().strategy().provenance().has_quality());
  EXPECT_EQ(last.result().strategy().provenance().quality().heldout_tokens(), kHeldoutTokens);

  // Watching a finished job: its final snapshot, then the end.
  const std::vector<v1::SearchJobUpdate> again = WatchToEnd(job->job_id());
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].job().state(), v1::SEARCH_JOB_SUCCEEDED);
}

TEST_F(SearchServerTest, CancelStopsARunningSearchWithinOneCandidateAndAQueuedJobAtOnce) {
  // Threshold 1: no candidate is ever accepted, so the search would score all 435 pairs.
  auto running = Create(SmolLm2(1.0, 8));
  ASSERT_TRUE(running.ok()) << running.status();
  auto context = Context(300);
  v1::WatchSearchJobRequest watch;
  watch.set_job_id(running->job_id());
  auto reader = jobs_->WatchSearchJob(context.get(), watch);
  v1::SearchJobUpdate u;
  while (reader->Read(&u) && u.job().progress().pairs_tried() < 3) {
  }
  ASSERT_EQ(u.job().state(), v1::SEARCH_JOB_RUNNING);

  // One job runs at a time here: a second one waits in the queue, and cancels at once.
  auto queued = Create(Stories(1));
  ASSERT_TRUE(queued.ok()) << queued.status();
  ASSERT_EQ(queued->state(), v1::SEARCH_JOB_QUEUED);
  v1::CancelSearchJobRequest cancel;
  cancel.set_job_id(queued->job_id());
  v1::SearchJob cancelled;
  ASSERT_TRUE(jobs_->CancelSearchJob(Context().get(), cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::SEARCH_JOB_CANCELLED);
  EXPECT_THAT(cancelled.error(), HasSubstr("while queued"));

  cancel.set_job_id(running->job_id());
  const auto asked = std::chrono::steady_clock::now();
  v1::SearchJob answer;
  ASSERT_TRUE(jobs_->CancelSearchJob(Context().get(), cancel, &answer).ok());
  const int tried_when_asked = answer.progress().pairs_tried();
  EXPECT_TRUE(answer.cancel_requested() || answer.state() == v1::SEARCH_JOB_CANCELLED);
  v1::SearchJob last = u.job();
  while (reader->Read(&u)) last = u.job();
  ASSERT_TRUE(reader->Finish().ok());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count();
  ASSERT_EQ(last.state(), v1::SEARCH_JOB_CANCELLED) << last.error();
  EXPECT_EQ(last.error_code(), int(grpc::StatusCode::CANCELLED));
  EXPECT_THAT(last.error(), HasSubstr("cancelled (CancelSearchJob)"));
  // It stopped before the candidate after the one being scored when the cancel came.
  EXPECT_LE(last.progress().pairs_tried(), tried_when_asked + 1);
  EXPECT_LT(last.progress().pairs_tried(), 435);
  EXPECT_LT(seconds, 10.0);
  // Cancelling a finished job changes nothing.
  v1::SearchJob after;
  ASSERT_TRUE(jobs_->CancelSearchJob(Context().get(), cancel, &after).ok());
  EXPECT_EQ(after.state(), v1::SEARCH_JOB_CANCELLED);
}

TEST_F(SearchServerTest, ARetriedCreateWithTheSameIdempotencyKeyMakesNoSecondJob) {
  v1::CreateSearchJobRequest request = Stories(1);
  request.set_idempotency_key("retry-me");
  // Four clients retrying at once, then one late retry: one job.
  std::vector<std::string> ids(4);
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::SearchService::NewStub(Channel(server_->port(), 100 + c));
      v1::SearchJob job;
      grpc::Status s = stub->CreateSearchJob(Context(120).get(), request, &job);
      EXPECT_TRUE(s.ok()) << s.error_message();
      ids[c] = job.job_id();
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 1u);
  WatchToEnd(ids[0]);
  auto late = Create(request);
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(late->job_id(), ids[0]);
  EXPECT_EQ(late->state(), v1::SEARCH_JOB_SUCCEEDED);  // the first job, as it is now

  v1::ListSearchJobsRequest list;
  v1::ListSearchJobsResponse jobs;
  ASSERT_TRUE(jobs_->ListSearchJobs(Context().get(), list, &jobs).ok());
  int with_key = 0;
  for (const v1::SearchJob& j : jobs.jobs())
    with_key += j.request().idempotency_key() == "retry-me";
  EXPECT_EQ(with_key, 1);

  // The key is bound to its request, the selection rule and held-out fields included.
  auto different = [&](auto edit) {
    v1::CreateSearchJobRequest r = request;
    edit(r);
    auto refused = Create(r);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << r.DebugString();
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr("idempotency_key 'retry-me'"));
  };
  different([](auto& r) { r.set_threshold(0.25); });
  different([](auto& r) { r.set_method("nll"); });
  different([](auto& r) { r.set_best_of(2); });
  different([](auto& r) { r.set_lazy(true); });
  different([](auto& r) { r.set_heldout_tokens(256); });
  different([](auto& r) { r.set_heldout_context(256); });
}

TEST_F(SearchServerTest, ANllBestOfTwoJobFindsWhatTheLibraryFindsWithItsQualityOnRecord) {
  v1::CreateSearchJobRequest request = Stories(2);
  request.set_method("nll");
  request.set_best_of(2);
  request.set_max_nll_increase(5.0);
  request.set_activations("f32");  // nll's default is int8; the library default is f32
  request.set_publish(true);
  auto job = Create(request);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::vector<v1::SearchJobUpdate> updates = WatchToEnd(job->job_id());
  ASSERT_FALSE(updates.empty());
  const v1::SearchJob& done = updates.back().job();
  ASSERT_EQ(done.state(), v1::SEARCH_JOB_SUCCEEDED) << done.error();
  EXPECT_EQ(done.request().method(), "nll");
  EXPECT_EQ(done.request().best_of(), 2);
  EXPECT_THAT(done.result().strategy().provenance().note(),
              HasSubstr("forwards with f32 activations"));

  // The same rule through the library, on this thread.
  auto model = Model::Load(testing::Asset("stories260K.bin"));
  ASSERT_TRUE(model.ok());
  auto tokenizer = LoadTokenizerForModel(**model, testing::Asset("tok512.bin"));
  ASSERT_TRUE(tokenizer.ok());
  auto calibration = BuildCalibrationSet(*text_, **tokenizer, {30, 64}, "tinystories");
  ASSERT_TRUE(calibration.ok());
  SelectionOptions options;
  options.method = SearchMethod::kNll;
  options.greedy.order = PairOrder::kSimilar;  // the request left order and lazy to nll's defaults
  options.lazy = true;
  options.greedy.target_layers = 2;
  options.greedy.threshold = 0.5;
  options.best_of = 2;
  options.max_nll_increase = 5.0;
  auto backend = MakeCpuBackend(1);
  auto local = RunStrategySearch(**model, *backend, *calibration, options);
  ASSERT_TRUE(local.ok()) << local.status();

  auto remote = FromProto(done.result().strategy());
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(remote->kv_source(), local->strategy->kv_source());
  EXPECT_EQ(remote->id(), local->strategy->id());
  EXPECT_EQ(remote->provenance().method, "nll");
  EXPECT_EQ(remote->provenance().method, local->strategy->provenance().method);
  EXPECT_EQ(remote->provenance().best_of, 2);
  EXPECT_EQ(remote->provenance().max_nll_increase, local->strategy->provenance().max_nll_increase);
  EXPECT_EQ(remote->provenance().score, local->strategy->provenance().score);
  const GreedyResult& g = local->selection.greedy;
  ASSERT_EQ(done.result().trace_size(), int(g.trace.size()));
  for (int t = 0; t < done.result().trace_size(); ++t) {
    EXPECT_EQ(std::make_tuple(done.result().trace(t).i(), done.result().trace(t).j(),
                              done.result().trace(t).accepted(), done.result().trace(t).score()),
              std::make_tuple(g.trace[t].i, g.trace[t].j, g.trace[t].accepted, g.trace[t].score));
  }
  EXPECT_EQ(done.result().stop_reason(), StopReasonName(g.stop));

  // Its quality: the library's measurement on the same slice, with the search's cosine score;
  // in the result and in the published record.
  auto quality =
      LibraryQuality(**model, **tokenizer, *calibration, local->strategy, local->calibration_score);
  ASSERT_TRUE(quality.ok()) << quality.status();
  ExpectQuality(done.result().strategy(), *quality);
  EXPECT_EQ(done.result().strategy().provenance().quality().calibration_score(),
            local->calibration_score);
  EXPECT_TRUE(remote->provenance().has_quality());
  ASSERT_TRUE(done.result().has_published());
  v1::GetStrategyRequest get;
  get.mutable_model_version()->set_model("stories260K");
  get.mutable_model_version()->set_version(done.result().published().version());
  v1::StrategyRecord record;
  ASSERT_TRUE(registry_->GetStrategy(Context().get(), get, &record).ok());
  EXPECT_EQ(record.strategy().id(), local->strategy->id());
  ExpectQuality(record.strategy(), *quality);
}

TEST_F(SearchServerTest, HeldoutTokensZeroSkipsTheQuality) {
  v1::CreateSearchJobRequest request = Stories(1);
  request.set_heldout_tokens(0);
  auto job = Create(request);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::vector<v1::SearchJobUpdate> updates = WatchToEnd(job->job_id());
  ASSERT_FALSE(updates.empty());
  const v1::SearchJob& done = updates.back().job();
  ASSERT_EQ(done.state(), v1::SEARCH_JOB_SUCCEEDED) << done.error();
  for (const v1::SearchJobUpdate& u : updates) {
    EXPECT_NE(u.job().progress().phase(), v1::SEARCH_PHASE_QUALITY);
  }
  EXPECT_FALSE(done.result().strategy().provenance().has_quality() &&
               done.result().strategy().provenance().quality().heldout_tokens() > 0);
}

TEST_F(SearchServerTest, InvalidRequestsAreRefusedNamingTheField) {
  auto expect = [&](const v1::CreateSearchJobRequest& r, absl::StatusCode code,
                    const std::string& message) {
    auto job = Create(r);
    ASSERT_FALSE(job.ok()) << message;
    EXPECT_EQ(job.status().code(), code) << job.status();
    EXPECT_THAT(std::string(job.status().message()), HasSubstr(message));
  };
  auto with = [](auto edit) {
    v1::CreateSearchJobRequest r = Stories(1);
    edit(r);
    return r;
  };
  using C = absl::StatusCode;
  expect(with([](auto& r) { r.set_model("llama-9000"); }), C::kNotFound,
         "model 'llama-9000' is not in the catalog (it has: smollm2, stories260K)");
  expect(with([](auto& r) { r.clear_model(); }), C::kInvalidArgument, "model is empty");
  expect(with([](auto& r) { r.set_calibration_text(""); }), C::kInvalidArgument,
         "calibration_text is empty");
  expect(with([](auto& r) { r.clear_calibration(); }), C::kInvalidArgument,
         "calibration is missing: give calibration_text or calibration_corpus");
  expect(with([](auto& r) { r.set_calibration_corpus("wiki-9000"); }), C::kNotFound,
         "calibration_corpus 'wiki-9000' is not in the catalog (it has: tinystories)");
  expect(with([](auto& r) { r.set_calibration_text("one line\nanother\n"); }), C::kInvalidArgument,
         "(samples 30, tokens 64)");
  expect(with([](auto& r) { r.set_target_layers(0); }), C::kInvalidArgument,
         "target_layers 0 must be >= 1");
  expect(with([](auto& r) { r.set_target_layers(5); }), C::kInvalidArgument,
         "target_layers 5 must be in [1, 4]");
  expect(with([](auto& r) { r.set_target_ratio(1.5); }), C::kInvalidArgument,
         "target_ratio 1.5 must be in (0, 1)");
  expect(with([](auto& r) { r.set_threshold(1.5); }), C::kInvalidArgument,
         "threshold 1.5 must be in (-1, 1]");
  expect(with([](auto& r) { r.set_order("cosine"); }), C::kInvalidArgument,
         "order 'cosine' is not one of dissimilar, similar, random");
  expect(with([](auto& r) { r.set_samples(0); }), C::kInvalidArgument, "samples 0 must be >= 1");
  expect(with([](auto& r) { r.set_tokens(600); }), C::kInvalidArgument,
         "tokens 600 exceeds the context of 'stories260K' (512)");
  // The selection rule and the held-out quality fields.
  expect(with([](auto& r) { r.set_best_of(0); }), C::kInvalidArgument, "best_of 0 must be >= 1");
  expect(with([](auto& r) { r.set_best_of(-3); }), C::kInvalidArgument, "best_of -3 must be >= 1");
  expect(with([](auto& r) {
           r.set_method("nll");
           r.set_max_nll_increase(0);
         }),
         C::kInvalidArgument, "max_nll_increase 0 must be > 0");
  expect(with([](auto& r) {
           r.set_method("nll");
           r.set_max_nll_increase(-0.5);
         }),
         C::kInvalidArgument, "max_nll_increase -0.5 must be > 0");
  expect(with([](auto& r) {
           r.set_method("kvsharer");
           r.set_max_nll_increase(0.1);
         }),
         C::kInvalidArgument, "max_nll_increase 0.1 applies to method nll, not method kvsharer");
  expect(with([](auto& r) { r.set_method("cosine"); }), C::kInvalidArgument,
         "method 'cosine' is not one of kvsharer, nll");
  expect(with([](auto& r) { r.set_activations("int16"); }), C::kInvalidArgument,
         "activations 'int16' is not one of f32, int8, int8x2");
  expect(with([](auto& r) {
           r.set_method("kvsharer");
           r.set_activations("int8x2");
         }),
         C::kInvalidArgument,
         "activations int8x2: the paper's search (method kvsharer) measures with exact (f32) "
         "activations");
  expect(with([](auto& r) { r.set_heldout_context(600); }), C::kInvalidArgument,
         "heldout_context 600 exceeds the context of model 'stories260K' (512)");
  expect(with([](auto& r) { r.set_heldout_context(1); }), C::kInvalidArgument,
         "heldout_context 1 must be >= 2");
  expect(with([](auto& r) { r.set_heldout_tokens(-1); }), C::kInvalidArgument,
         "heldout_tokens -1 must be >= 0");
  expect(with([](auto& r) { r.set_heldout_tokens(100000000); }), C::kInvalidArgument,
         "heldout_tokens 100000000 asked for");

  v1::SearchJob job;
  v1::GetSearchJobRequest get;
  get.set_job_id("job-999999");
  grpc::Status s = jobs_->GetSearchJob(Context().get(), get, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("job_id 'job-999999' names no job"));
  get.clear_job_id();
  EXPECT_EQ(jobs_->GetSearchJob(Context().get(), get, &job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status watch_status;
  EXPECT_TRUE(WatchToEnd("job-999999", &watch_status).empty());
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::NOT_FOUND);

  // The registry.
  v1::StrategyRecord record;
  v1::GetStrategyRequest by_version;
  by_version.mutable_model_version()->set_model("stories260K");
  by_version.mutable_model_version()->set_version(0);
  s = registry_->GetStrategy(Context().get(), by_version, &record);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("model_version.version 0 must be >= 1"));
  by_version.mutable_model_version()->set_version(999);
  s = registry_->GetStrategy(Context().get(), by_version, &record);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("no strategy version 999"));
  by_version.mutable_model_version()->set_model("llama-9000");
  s = registry_->GetStrategy(Context().get(), by_version, &record);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("model_version.model 'llama-9000'"));

  v1::PublishStrategyRequest publish;
  v1::PublishStrategyResponse published;
  s = registry_->PublishStrategy(Context().get(), publish, &published);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("strategy is missing"));
  publish.mutable_strategy()->set_model_fingerprint(std::string(64, 'e'));
  // Layer 2 reads layer 1, which reads layer 0: not a root.
  for (int src : {0, 0, 1, 3}) publish.mutable_strategy()->add_kv_source(src);
  s = registry_->PublishStrategy(Context().get(), publish, &published);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("strategy: "));
  EXPECT_THAT(s.error_message(), HasSubstr("layer"));
}

TEST_F(SearchServerTest, PublishRefusesTheWrongLayerCountAndOversizedFields) {
  auto identity = [](const std::string& fingerprint, int layers) {
    v1::PublishStrategyRequest r;
    r.mutable_strategy()->set_model_fingerprint(fingerprint);
    for (int l = 0; l < layers; ++l) r.mutable_strategy()->add_kv_source(l);
    return r;
  };
  v1::PublishStrategyResponse published;
  // Named after a catalog model: its layers (stories260K has 5) and fingerprint must fit.
  v1::PublishStrategyRequest r = identity(std::string(64, '7'), 6);
  r.set_model_name("stories260K");
  grpc::Status s = registry_->PublishStrategy(Context().get(), r, &published);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("has 6 layers, the model 'stories260K' has 5"));
  // A model known from its first version: later versions keep its layer count.
  ASSERT_TRUE(
      registry_->PublishStrategy(Context().get(), identity(std::string(64, '8'), 4), &published)
          .ok());
  s = registry_->PublishStrategy(Context().get(), identity(std::string(64, '8'), 3), &published);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("strategy.kv_source has 3 layers"));
  // Oversized strings: refused naming the field and the limit, the value cut.
  r = identity(std::string(64, '9'), 4);
  r.set_model_name(std::string(20000, 'n'));
  s = registry_->PublishStrategy(Context().get(), r, &published);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("model_name"));
  EXPECT_THAT(s.error_message(), HasSubstr("is 20000 bytes; at most 256"));
  EXPECT_LT(s.error_message().size(), 200u);
  v1::GetSearchJobRequest get;
  get.set_job_id(std::string(20000, 'j'));
  v1::SearchJob job;
  s = jobs_->GetSearchJob(Context().get(), get, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("is 20000 bytes; at most 256"));
  EXPECT_LT(s.error_message().size(), 200u);
  v1::CreateSearchJobRequest create = Stories(1);
  create.set_samples(2147483647);
  auto created = Create(create);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(created.status().message()),
              HasSubstr("samples 2147483647 is above the limit, 4096"));
}

TEST_F(SearchServerTest, ConcurrentPublishesFromManyClientsGiveDenseVersionsWithNoDuplicates) {
  const std::string fingerprint(64, 'c');
  constexpr int kClients = 8, kDistinct = 48;
  auto strategy = [&](int k) {
    v1::SharingStrategy s;
    s.set_model_fingerprint(fingerprint);
    for (int l = 0; l < 30; ++l) s.add_kv_source(l);
    // 29 strategies where one layer shares layer 0, then 19 where two do.
    s.set_kv_source(1 + k % 29, 0);
    if (k >= 29) s.set_kv_source(29, 0);
    return s;
  };
  // Each strategy goes out from two clients at once.
  std::vector<std::map<std::string, uint64_t>> seen(kClients);
  std::vector<int> created(kClients, 0);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::StrategyRegistry::NewStub(Channel(server_->port(), 200 + c));
      for (int k = 0; k < kDistinct; ++k) {
        if (k % (kClients / 2) != c % (kClients / 2)) continue;
        v1::PublishStrategyRequest request;
        *request.mutable_strategy() = strategy(k);
        request.set_model_name("fake-30");
        v1::PublishStrategyResponse response;
        grpc::Status s = stub->PublishStrategy(Context().get(), request, &response);
        ASSERT_TRUE(s.ok()) << s.error_message();
        seen[c][response.record().strategy().id()] = response.record().version();
        created[c] += response.created();
      }
    });
  }
  for (auto& c : clients) c.join();
  std::map<std::string, uint64_t> versions;
  for (const auto& m : seen) {
    for (const auto& [id, v] : m) {
      auto [it, inserted] = versions.emplace(id, v);
      EXPECT_EQ(it->second, v) << id << " answered with two versions";
    }
  }
  int total_created = 0;
  for (int n : created) total_created += n;
  EXPECT_EQ(total_created, int(versions.size()));  // every strategy created exactly once

  v1::ListStrategiesRequest list;
  list.set_model("fake-30");  // a name strategies were published under
  v1::ListStrategiesResponse all;
  ASSERT_TRUE(registry_->ListStrategies(Context().get(), list, &all).ok());
  ASSERT_EQ(all.records_size(), int(versions.size()));
  std::set<std::string> ids;
  for (int i = 0; i < all.records_size(); ++i) {
    EXPECT_EQ(all.records(i).version(), uint64_t(i + 1));  // dense, in order
    ids.insert(all.records(i).strategy().id());
    EXPECT_EQ(versions.at(all.records(i).strategy().id()), all.records(i).version());
  }
  EXPECT_EQ(ids.size(), versions.size());

  // Deprecation hides a version from the default listing only.
  v1::DeprecateStrategyRequest deprecate;
  deprecate.mutable_model_version()->set_model(fingerprint);
  deprecate.mutable_model_version()->set_version(2);
  deprecate.set_reason("test");
  v1::StrategyRecord record;
  ASSERT_TRUE(registry_->DeprecateStrategy(Context().get(), deprecate, &record).ok());
  EXPECT_TRUE(record.deprecated());
  ASSERT_TRUE(registry_->ListStrategies(Context().get(), list, &all).ok());
  EXPECT_EQ(all.records_size(), int(versions.size()) - 1);
  list.set_include_deprecated(true);
  ASSERT_TRUE(registry_->ListStrategies(Context().get(), list, &all).ok());
  EXPECT_EQ(all.records_size(), int(versions.size()));
}

TEST_F(SearchServerTest, HealthSaysServingForTheServerAndBothServices) {
  grpc::GenericStub stub(Channel(server_->port()));
  for (const std::string service :
       {"", "kvshare.v1.SearchService", "kvshare.v1.StrategyRegistry"}) {
    // grpc.health.v1.HealthCheckRequest{service} by hand: field 1, length-delimited.
    std::string request_bytes;
    if (!service.empty()) {
      request_bytes = std::string(1, '\x0a') + char(service.size()) + service;
    }
    grpc::Slice slice(request_bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext context;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                   &response, [&](grpc::Status s) {
                     std::lock_guard<std::mutex> lock(mu);
                     status = s;
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    ASSERT_TRUE(status.ok()) << service << ": " << status.error_message();
    grpc::Slice out;
    ASSERT_TRUE(response.DumpToSingleSlice(&out).ok());
    // HealthCheckResponse{status: SERVING (1)}.
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(out.begin()), out.size()),
              std::string("\x08\x01", 2))
        << service;
  }
}

}  // namespace
}  // namespace kvshare
