// kvshare search --server / kvshare strategies: the search service's jobs and registry from the
// command line (tools/search_client.h).
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/strategy/sharing_strategy.h"
#include "common/util/file.h"
#include "grpcpp/grpcpp.h"
#include "kernels/cpu/matmul.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "kvshare/v1/search.grpc.pb.h"
#include "proto/wire/projections_transfer.h"
#include "proto/wire/search_job_wire.h"
#include "proto/wire/strategy_wire.h"
#include "tools/client_flags.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/rpc_failure.h"
#include "tools/search_client.h"
#include "tools/session.h"

namespace kvshare::cli {
namespace {

std::shared_ptr<grpc::Channel> Connect(const std::string& server) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args);
}

const std::string kSearchService = v1::SearchService::service_full_name();
const std::string kRegistry = v1::StrategyRegistry::service_full_name();

std::string RandomKey() {
  std::random_device rd;
  return absl::StrFormat("kvshare-cli-%08x%08x", rd(), rd());
}

std::string Short(const std::string& id) { return id.substr(0, 16); }

std::string FormatTimestamp(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixSeconds(t.seconds()),
                          absl::UTCTimeZone());
}

void PrintRecord(const v1::StrategyRecord& r) {
  const v1::SharingStrategy& s = r.strategy();
  const int owning = OwningLayers(s);
  std::cout << absl::StrFormat(
      "model      %s (%s)\n"
      "version    %d%s\n"
      "strategy   %s\n"
      "kv_source  %s\n"
      "owning     %d of %d layers\n"
      "method     %s, order %s, threshold %g, target %d, score %.6f\n"
      "note       %s\n"
      "published  %s UTC%s\n",
      r.model_name().empty() ? "-" : r.model_name(), r.model_fingerprint(), r.version(),
      r.deprecated() ? absl::StrFormat(" (deprecated %s UTC: %s)",
                                       FormatTimestamp(r.deprecate_time()), r.deprecation_reason())
                     : "",
      s.id(), absl::StrJoin(s.kv_source(), " "), owning, s.kv_source_size(),
      s.provenance().method(), s.provenance().order(), s.provenance().threshold(),
      s.provenance().target_layers(), s.provenance().score(), s.provenance().note(),
      FormatTimestamp(r.publish_time()),
      r.source_job_id().empty() ? "" : absl::StrFormat(" by %s", r.source_job_id()));
}

void PrintJobResult(const v1::SearchJob& job) {
  const v1::SearchResult& r = job.result();
  std::cout << absl::StrFormat("%-10s %10s %10s  %s\n", "pair", "distance", "score", "accepted");
  for (const v1::PairTrial& t : r.trace()) {
    std::cout << absl::StrFormat("%-10s %10.4f %10.6f  %s\n",
                                 absl::StrFormat("(%d, %d)", t.i(), t.j()), t.distance(), t.score(),
                                 t.accepted() ? "yes" : "no");
  }
  const v1::SharingStrategy& s = r.strategy();
  const int owning = OwningLayers(s);
  // "0 1 1 ...", or with a KV plan each owning layer's type: "0:int4 1:int8 1 ...".
  std::vector<std::string> sources;
  for (int l = 0; l < s.kv_source_size(); ++l) {
    const bool typed = s.kv_source(l) == l && l < s.kv_types_size();
    sources.push_back(typed ? absl::StrCat(l, ":", s.kv_types(l)) : absl::StrCat(s.kv_source(l)));
  }
  const bool nll_score = s.provenance().method() == "nll" || s.provenance().method() == "kvplan";
  std::cout << absl::StrFormat(
      "stop       %s: %d of %d target layers share; %d pairs scored, %d skipped\n"
      "kv_source  %s\n"
      "owning     %d of %d layers\n"
      "score      %.6f (%s)\n"
      "time       %.2f s (calibration %.2f s, greedy %.2f s)\n"
      "strategy   %s\n",
      r.stop_reason(), s.kv_source_size() - owning, job.progress().target_layers(),
      r.pairs_scored(), r.pairs_skipped(), absl::StrJoin(sources, " "), owning, s.kv_source_size(),
      s.provenance().score(),
      nll_score ? "minus the calibration NLL increase, nats/token"
                : "mean cosine similarity to the unshared model",
      r.total_seconds(), r.calibration_seconds(), r.greedy_seconds(), s.id());
  if (s.provenance().has_quality() && s.provenance().quality().heldout_tokens() > 0) {
    const v1::StrategyQuality& q = s.provenance().quality();
    std::cout << absl::StrFormat(
        "heldout    perplexity %.4f (unshared %.4f) on %d tokens in %d-token windows\n",
        q.heldout_ppl(), q.baseline_ppl(), q.heldout_tokens(), q.heldout_context());
  }
  if (r.has_published()) {
    std::cout << absl::StrFormat("published  version %d of %s (%s)\n", r.published().version(),
                                 r.published().model_name(),
                                 Short(r.published().model_fingerprint()));
  }
}

// Ends a follow: prints the outcome, writes --out; the exit code.
int Conclude(const v1::SearchJob& job, const std::string& out) {
  if (job.has_result() && job.result().has_strategy()) PrintJobResult(job);
  if (job.state() != v1::SEARCH_JOB_SUCCEEDED) {
    std::cerr << absl::StrFormat("error: job %s %s: %s\n", job.job_id(),
                                 SearchJobStateName(job.state()), job.error());
    return 1;
  }
  if (!out.empty()) {
    auto strategy = FromProto(job.result().strategy());
    if (!strategy.ok()) return Fail(strategy.status());
    absl::Status s = strategy->WriteFile(out);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrFormat("wrote      %s\n", out);
  }
  return 0;
}

int FollowRemoteSearch(const std::string& server, const std::string& job_id,
                       const std::string& out) {
  auto stub = v1::SearchService::NewStub(Connect(server));
  grpc::ClientContext context;
  v1::WatchSearchJobRequest request;
  request.set_job_id(job_id);
  auto reader = stub->WatchSearchJob(&context, request);
  std::cerr << absl::StrFormat(
      "following %s on %s (Ctrl-C stops following; the job keeps running: cancel it with "
      "`kvshare search --server %s --cancel %s`)\n",
      job_id, server, server, job_id);
  ProgressBar bar("search", "pairs");
  v1::SearchJobUpdate update;
  v1::SearchJob last;
  v1::SearchPhase phase = v1::SEARCH_PHASE_UNSPECIFIED;
  bool bar_drawn = false;
  while (reader->Read(&update)) {
    last = update.job();
    const v1::SearchProgress& p = last.progress();
    if (p.phase() != phase && p.phase() != v1::SEARCH_PHASE_GREEDY &&
        p.phase() != v1::SEARCH_PHASE_DONE) {
      if (bar_drawn) bar.Finish();
      std::cerr << absl::StrFormat("%s: %s\n", job_id, SearchPhaseDescription(p.phase()));
    }
    phase = p.phase();
    if (p.phase() == v1::SEARCH_PHASE_GREEDY && p.pairs_total() > 0) {
      bar.Update(
          p.pairs_done(), p.pairs_total(),
          absl::StrFormat(
              "pair (%d, %d), %d tried, %d accepted, %d/%d layers share, "
              "best %.4f%s",
              p.pair_i(), p.pair_j(), p.pairs_tried(), p.accepted(), p.sharing_layers(),
              p.target_layers(), p.best_score(),
              p.eta_seconds() >= 0 ? absl::StrFormat(", server eta %.0fs", p.eta_seconds()) : ""));
      bar_drawn = true;
    }
  }
  if (bar_drawn) bar.Finish();
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportRpcFailure(server, kSearchService, status, 0);
  if (!IsTerminalJobState(last.state())) {
    std::cerr << absl::StrFormat("error: the watch of %s ended before the job did\n", job_id);
    return 1;
  }
  return Conclude(last, out);
}

int CancelRemoteSearch(const std::string& server, const std::string& job_id, double timeout_s) {
  auto stub = v1::SearchService::NewStub(Connect(server));
  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(timeout_s));
  v1::CancelSearchJobRequest request;
  request.set_job_id(job_id);
  v1::SearchJob job;
  grpc::Status status = stub->CancelSearchJob(&context, request, &job);
  if (!status.ok()) return ReportRpcFailure(server, kSearchService, status, timeout_s);
  std::cout << absl::StrFormat("%s: %s%s\n", job.job_id(), SearchJobStateName(job.state()),
                               job.cancel_requested() && !IsTerminalJobState(job.state())
                                   ? " (cancel requested; stops within one candidate evaluation)"
                                   : "");
  return 0;
}

}  // namespace

void AddRemoteSearchFlags(CLI::App* search, RemoteSearchFlags* f) {
  search->add_option("--server", f->server,
                     "Run the search as a job of this kvshare-search (host:port) and follow it; "
                     "--model is then a name from the server's catalog (default smollm2)");
  search->add_option("--calibration-corpus", f->calibration_corpus,
                     "With --server: a calibration corpus of the server's catalog, by name");
  search->add_flag("--publish", f->publish,
                   "With --server: publish the strategy to the registry when the job succeeds");
  search->add_option("--idempotency-key", f->idempotency_key,
                     "With --server: a retried create with this key returns the first job");
  search->add_flag("--detach", f->detach, "With --server: print the job id and return");
  search->add_option("--follow", f->follow, "With --server: follow an existing job to its end");
  search->add_option("--cancel", f->cancel, "With --server: cancel a job");
  AddTimeoutFlag(search, &f->timeout_s,
                 "With --server: seconds to wait for the job to be created or cancelled (a "
                 "model's first job loads it; following a job has no deadline)");
}

absl::Status CheckNoRemoteFlags(const RemoteSearchFlags& f) {
  if (!f.calibration_corpus.empty() || f.publish || !f.idempotency_key.empty() || f.detach ||
      !f.follow.empty() || !f.cancel.empty()) {
    return absl::InvalidArgumentError(
        "--calibration-corpus, --publish, --idempotency-key, --detach, --follow and --cancel "
        "need --server");
  }
  return absl::OkStatus();
}

int RunRemoteSearchCommand(const RemoteSearchFlags& f, const std::string& model,
                           const SearchRequest& r, const HeldoutOptions& heldout,
                           const std::string& out) {
  if (!f.cancel.empty()) return CancelRemoteSearch(f.server, f.cancel, f.timeout_s);
  if (!f.follow.empty()) return FollowRemoteSearch(f.server, f.follow, out);
  if (!out.empty()) {
    // Checked before the job is created, so a typo does not cost a search.
    const size_t slash = out.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : out.substr(0, slash + 1);
    if (access(dir.c_str(), W_OK) != 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("--out %s: directory %s does not exist or is not writable", out, dir)));
    }
  }
  v1::CreateSearchJobRequest request;
  request.set_model(model.empty() ? "smollm2" : model);
  if (!r.calibration_path.empty() && !f.calibration_corpus.empty()) {
    return Fail(absl::InvalidArgumentError("--calibration and --calibration-corpus: give one"));
  }
  if (!f.calibration_corpus.empty()) {
    request.set_calibration_corpus(f.calibration_corpus);
  } else if (!r.calibration_path.empty()) {
    auto text = ReadFileToString(r.calibration_path);
    if (!text.ok()) return Fail(text.status());
    request.set_calibration_text(std::move(*text));
  } else {
    return Fail(absl::InvalidArgumentError(
        "give --calibration FILE (sent to the server) or --calibration-corpus NAME (one of "
        "the server's catalog)"));
  }
  request.set_samples(r.calibration.samples);
  request.set_tokens(r.calibration.tokens);
  if (r.target_layers.has_value()) request.set_target_layers(*r.target_layers);
  if (r.target_ratio.has_value()) request.set_target_ratio(*r.target_ratio);
  request.set_threshold(r.threshold);
  if (r.order.has_value()) request.set_order(*r.order);
  request.set_seed(r.seed);
  request.set_method(r.method);
  if (r.best_of.has_value()) request.set_best_of(*r.best_of);
  if (r.lazy.has_value()) request.set_lazy(*r.lazy);
  if (r.max_nll_increase.has_value()) request.set_max_nll_increase(*r.max_nll_increase);
  if (r.max_ppl_increase.has_value()) request.set_max_ppl_increase(*r.max_ppl_increase);
  if (r.kv_block_tokens.has_value()) request.set_kv_block_tokens(*r.kv_block_tokens);
  if (r.drop_attention.has_value()) request.set_drop_attention(*r.drop_attention);
  if (r.drop_substitutes.has_value()) request.set_drop_substitutes(*r.drop_substitutes);
  if (r.activations.has_value()) request.set_activations(cpu::ActivationsName(*r.activations));
  request.set_heldout_tokens(static_cast<int32_t>(heldout.tokens));
  request.set_heldout_context(heldout.context);
  request.set_publish(f.publish);
  request.set_idempotency_key(f.idempotency_key.empty() ? RandomKey() : f.idempotency_key);

  auto stub = v1::SearchService::NewStub(Connect(f.server));
  v1::SearchJob job;
  grpc::Status status;
  // The key makes a retry safe: a create that reached the server returns the same job.
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineAfter(f.timeout_s));  // a first job loads the model
    status = stub->CreateSearchJob(&context, request, &job);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (!status.ok()) return ReportRpcFailure(f.server, kSearchService, status, f.timeout_s);
  std::cerr << absl::StrFormat(
      "job %s %s: model %s (%d layers, %s), calibration %s, target %d sharing layers\n",
      job.job_id(), SearchJobStateName(job.state()), job.request().model(), job.n_layers(),
      Short(job.model_fingerprint()), Short(job.calibration_hash()),
      job.progress().target_layers());
  if (f.detach) {
    std::cout << job.job_id() << "\n";
    return 0;
  }
  return FollowRemoteSearch(f.server, job.job_id(), out);
}

Runner RegisterStrategies(CLI::App& app) {
  struct Flags {
    std::string server;
    double timeout_s = 60;
    std::string model;
    uint64_t version = 0;
    std::string id;
    bool all = false;
    bool json = false;
    std::string file;
    std::string model_name;
    std::string reason;
    std::string out;
  };
  auto f = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "strategies", "The search service's strategy registry: list, show, publish, deprecate");
  sub->require_subcommand(1);
  auto add_server = [&](CLI::App* c) {
    AddServerFlag(c, &f->server, ServerKind::kSearch);
    AddTimeoutFlag(c, &f->timeout_s, "Seconds to wait for each call");
  };
  CLI::App* list = sub->add_subcommand("list", "List published strategy versions");
  add_server(list);
  AddJsonFlag(list, &f->json);
  list->add_option("--model", f->model, "Only this model (catalog name or fingerprint)");
  list->add_flag("--all", f->all, "Include deprecated versions");

  CLI::App* show =
      sub->add_subcommand("show",
                          "Show one version (--model and --version; --model alone: the newest "
                          "non-deprecated) or a strategy id");
  add_server(show);
  show->add_option("--model", f->model, "Catalog name or fingerprint");
  show->add_option("--version", f->version, "Version number");
  show->add_option("--id", f->id, "Strategy id");
  show->add_option("--out", f->out, "Also write the strategy JSON file here");
  AddJsonFlag(show, &f->json);

  CLI::App* publish =
      sub->add_subcommand("publish",
                          "Publish a strategy file as its model's next version (same content: the "
                          "existing version)");
  add_server(publish);
  // --strategy names a strategy file everywhere else; --file is the older spelling.
  publish->add_option("--strategy,--file", f->file, "Strategy JSON (kvshare search/strategy --out)")
      ->required();
  publish->add_option("--model-name", f->model_name, "Name to list it under");

  CLI::App* deprecate = sub->add_subcommand("deprecate", "Mark a version deprecated");
  add_server(deprecate);
  deprecate->add_option("--model", f->model, "Catalog name or fingerprint")->required();
  deprecate->add_option("--version", f->version, "Version number")->required();
  deprecate->add_option("--reason", f->reason, "Why (kept with the version)");

  return [f, list, show, publish, deprecate]() -> int {
    auto stub = v1::StrategyRegistry::NewStub(Connect(f->server));
    grpc::ClientContext context;
    context.set_deadline(DeadlineAfter(f->timeout_s));
    auto fail = [&](const grpc::Status& status) {
      return ReportRpcFailure(f->server, kRegistry, status, f->timeout_s);
    };
    if (list->parsed()) {
      v1::ListStrategiesRequest request;
      request.set_model(f->model);
      request.set_include_deprecated(f->all);
      v1::ListStrategiesResponse response;
      grpc::Status status = stub->ListStrategies(&context, request, &response);
      if (!status.ok()) return fail(status);
      if (f->json) {
        std::cout << ToJsonLine(response) << "\n";
        return 0;
      }
      std::cout << absl::StrFormat("%-14s %-16s %7s  %-16s %8s %9s  %-10s %-19s %s\n", "model",
                                   "fingerprint", "version", "strategy", "owning", "score",
                                   "method", "published (UTC)", "state");
      for (const v1::StrategyRecord& r : response.records()) {
        const v1::SharingStrategy& s = r.strategy();
        const int owning = OwningLayers(s);
        std::cout << absl::StrFormat(
            "%-14s %-16s %7d  %-16s %8s %9.6f  %-10s %-19s %s\n",
            r.model_name().empty() ? "-" : r.model_name(), Short(r.model_fingerprint()),
            r.version(), Short(s.id()), absl::StrFormat("%d/%d", owning, s.kv_source_size()),
            s.provenance().score(), s.provenance().method().empty() ? "-" : s.provenance().method(),
            FormatTimestamp(r.publish_time()), r.deprecated() ? "deprecated" : "active");
      }
      return 0;
    }
    if (show->parsed()) {
      v1::GetStrategyRequest request;
      if (!f->id.empty()) {
        request.set_strategy_id(f->id);
      } else if (!f->model.empty()) {
        uint64_t version = f->version;
        if (version == 0) {  // the newest non-deprecated
          v1::ListStrategiesRequest lr;
          lr.set_model(f->model);
          v1::ListStrategiesResponse response;
          grpc::Status status = stub->ListStrategies(&context, lr, &response);
          if (!status.ok()) return fail(status);
          if (response.records_size() == 0) {
            return Fail(absl::NotFoundError(
                absl::StrFormat("model %s has no active strategy version", f->model)));
          }
          version = response.records(response.records_size() - 1).version();
        }
        request.mutable_model_version()->set_model(f->model);
        request.mutable_model_version()->set_version(version);
      } else {
        return Fail(absl::InvalidArgumentError("give --id, or --model (and --version)"));
      }
      grpc::ClientContext get_context;
      get_context.set_deadline(DeadlineAfter(f->timeout_s));
      v1::StrategyRecord record;
      grpc::Status status = stub->GetStrategy(&get_context, request, &record);
      if (!status.ok()) return fail(status);
      if (f->json) {
        std::cout << ToJsonLine(record) << "\n";
      } else {
        PrintRecord(record);
      }
      if (!f->out.empty()) {
        auto strategy = FromProto(record.strategy(), [&](const ProjectionsHeader& h) {
          return FetchProjections(stub.get(), h);
        });
        if (!strategy.ok()) return Fail(strategy.status());
        absl::Status s = strategy->WriteFile(f->out);
        if (!s.ok()) return Fail(s);
        if (!f->json) std::cout << absl::StrFormat("wrote      %s\n", f->out);
      }
      return 0;
    }
    if (publish->parsed()) {
      auto strategy = SharingStrategy::ReadFile(f->file);
      if (!strategy.ok()) return Fail(strategy.status());
      if (strategy->projections() != nullptr) {  // the blob first (registry.proto)
        absl::Status s = UploadProjections(stub.get(), *strategy->projections());
        if (!s.ok()) return Fail(s);
      }
      v1::PublishStrategyRequest request;
      ToProto(*strategy, request.mutable_strategy());
      request.set_model_name(f->model_name);
      v1::PublishStrategyResponse response;
      grpc::Status status = stub->PublishStrategy(&context, request, &response);
      if (!status.ok()) return fail(status);
      std::cout << absl::StrFormat(
          "%s version %d of model %s (strategy %s)\n",
          response.created() ? "published" : "already published as", response.record().version(),
          Short(response.record().model_fingerprint()), Short(response.record().strategy().id()));
      return 0;
    }
    if (deprecate->parsed()) {
      v1::DeprecateStrategyRequest request;
      request.mutable_model_version()->set_model(f->model);
      request.mutable_model_version()->set_version(f->version);
      request.set_reason(f->reason);
      v1::StrategyRecord record;
      grpc::Status status = stub->DeprecateStrategy(&context, request, &record);
      if (!status.ok()) return fail(status);
      std::cout << absl::StrFormat("deprecated version %d of model %s: %s\n", record.version(),
                                   Short(record.model_fingerprint()), record.deprecation_reason());
      return 0;
    }
    return 1;
  };
}

}  // namespace kvshare::cli
