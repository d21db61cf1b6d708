#include "inference_service/openai_http.h"

#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "inference_service/openai_api.h"
#include "inference_service/request_builder.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

constexpr char kJson[] = "application/json";
// How often a waiting handler or stream looks for a departed client.
constexpr absl::Duration kPollSlice = absl::Milliseconds(50);

// One completion as the scheduler's sink: tokens and the outcome queue here, and the HTTP
// connection thread takes them. The sink keeps itself alive from OnAccepted to OnFinished, so
// a client that leaves early (its handler gone) cannot free it under the scheduler.
class HttpGeneration : public GenerationSink, public std::enable_shared_from_this<HttpGeneration> {
 public:
  explicit HttpGeneration(Scheduler& scheduler) : scheduler_(scheduler) {}

  void OnAccepted(const GenerationRequest&) override {
    absl::MutexLock lock(&mu_);
    self_ = shared_from_this();
  }
  void OnToken(const SampledToken& token) override {
    absl::MutexLock lock(&mu_);
    tokens_.push_back(token);
  }
  void OnFinished(const GenerationOutcome& outcome) override {
    std::shared_ptr<HttpGeneration> self;  // released last, after the lock
    absl::MutexLock lock(&mu_);
    outcome_ = outcome;
    self = std::move(self_);
  }
  bool IsCancelled() const override { return cancelled_.load(std::memory_order_relaxed); }

  // The client is gone: the scheduler stops the sequence at its next step.
  void Cancel() {
    if (!cancelled_.exchange(true)) scheduler_.Wake();
  }

  // Waits up to `timeout` for tokens or the end, appends the tokens that came to `tokens`,
  // and returns the outcome once the generation has finished.
  std::optional<GenerationOutcome> Take(absl::Duration timeout, std::vector<SampledToken>& tokens) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &HttpGeneration::HasNews), timeout);
    for (SampledToken& t : tokens_) tokens.push_back(std::move(t));
    tokens_.clear();
    return outcome_;
  }

 private:
  bool HasNews() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !tokens_.empty() || outcome_.has_value();
  }

  Scheduler& scheduler_;
  std::atomic<bool> cancelled_{false};
  absl::Mutex mu_;
  std::vector<SampledToken> tokens_ ABSL_GUARDED_BY(mu_);
  std::optional<GenerationOutcome> outcome_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<HttpGeneration> self_ ABSL_GUARDED_BY(mu_);
};

// Counts a response in flight until the last copy of it is destroyed (the handler's, or the
// stream provider's once httplib has written the last byte).
std::shared_ptr<void> TrackResponse(StreamCounter& counter) {
  counter.Add();
  return std::shared_ptr<void>(&counter, [](void* c) { static_cast<StreamCounter*>(c)->Done(); });
}

void SetError(httplib::Response& res, const OpenAiError& error) {
  res.status = error.http_status;
  if (error.http_status == 429 || error.http_status == 503) res.set_header("Retry-After", "1");
  res.set_content(OpenAiErrorJson(error), kJson);
}

// A 64-bit mix (splitmix64) so that consecutive request numbers give unrelated seeds.
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

class OpenAiHttpServer::Routes {
 public:
  explicit Routes(OpenAiHttpServer* server) : s_(*server) {}

  void Models(httplib::Response& res) {
    InferenceWorker* worker = s_.worker_.load();
    if (worker == nullptr) return Refuse(res, Loading(), OpenAiEndpoint::kCompletions, false);
    const ModelConfig& c = worker->model().config();
    res.set_content(
        OpenAiModelsJson(c.name, s_.started_unix_, c.max_seq_len, worker->model().fingerprint()),
        kJson);
  }

  void Health(httplib::Response& res) {
    const bool serving = s_.worker_.load() != nullptr && !s_.draining_.load();
    res.status = serving ? 200 : 503;
    res.set_content(serving ? "{\"status\":\"serving\"}" : "{\"status\":\"not_serving\"}", kJson);
  }

  void Completion(OpenAiEndpoint endpoint, const httplib::Request& req, httplib::Response& res) {
    InferenceWorker* worker = s_.worker_.load();
    if (worker == nullptr) return Refuse(res, Loading(), endpoint, true);
    if (s_.draining_.load()) {
      return Refuse(res, absl::UnavailableError("worker is draining: not accepting requests"),
                    endpoint, true);
    }
    const int64_t n = s_.next_id_.fetch_add(1);
    auto parsed = ParseOpenAiRequest(endpoint, req.body, Mix(s_.seed_base_ + n));
    if (!parsed.ok()) return Refuse(res, parsed.status(), endpoint, true);
    const bool chat = endpoint == OpenAiEndpoint::kChatCompletions;
    std::string id = absl::StrFormat("%s-%s-%d", chat ? "chatcmpl" : "cmpl", s_.id_prefix_, n);
    const Model& model = worker->model();
    auto request = BuildGenerationRequest(parsed->wire, id, worker->tokenizer(), model.config(),
                                          worker->strategies(), worker->limits());
    if (!request.ok()) return Refuse(res, request.status(), endpoint, true);
    OpenAiResponseContext context;
    context.id = id;
    context.model = model.config().name;
    context.created = absl::ToUnixSeconds(absl::Now());
    context.strategy_version = request->strategy.version;
    context.strategy_id = request->strategy.strategy->id();

    std::shared_ptr<void> in_flight = TrackResponse(s_.responses_);
    auto generation = std::make_shared<HttpGeneration>(worker->scheduler());
    absl::Status submitted = worker->scheduler().Submit(std::move(*request), generation.get());
    if (!submitted.ok()) return Refuse(res, submitted, endpoint, true);
    spdlog::debug("event=request_accepted request_id={} protocol=http stream={}",
                  runtime::LogValue(id), parsed->stream);
    auto formatter = std::make_shared<OpenAiResponseFormatter>(*parsed, std::move(context));
    if (parsed->stream) {
      Stream(res, std::move(generation), std::move(formatter), std::move(in_flight));
    } else {
      Whole(res, *generation, *formatter, endpoint);
    }
  }

 private:
  static absl::Status Loading() { return absl::UnavailableError("worker is loading its model"); }

  void Refuse(httplib::Response& res, const absl::Status& status, OpenAiEndpoint endpoint,
              bool count) {
    if (count && s_.metrics_ != nullptr) {
      s_.metrics_->requests(absl::AsciiStrToLower(absl::StatusCodeToString(status.code())))
          .Increment();
    }
    if (count) {
      spdlog::info("event=request_refused protocol=http code={} message={}",
                   absl::StatusCodeToString(status.code()),
                   runtime::LogValue(std::string(status.message())));
    }
    SetError(res, OpenAiErrorFrom(status, endpoint));
  }

  // stream = false: waits for the end on this thread, cancelling if the client leaves.
  void Whole(httplib::Response& res, HttpGeneration& generation, OpenAiResponseFormatter& formatter,
             OpenAiEndpoint endpoint) {
    std::vector<SampledToken> tokens;
    std::optional<GenerationOutcome> outcome;
    while (!(outcome = generation.Take(kPollSlice, tokens))) {
      if (runtime::HttpClientGone()) {
        generation.Cancel();  // nobody will read the answer
        res.status = 499;     // (nginx's "client closed request"; never seen by the client)
        return;
      }
    }
    if (!outcome->status.ok()) {  // cut by a drain or a failure (the scheduler counted it)
      SetError(res, OpenAiErrorFrom(outcome->status, endpoint));
      return;
    }
    res.set_content(formatter.Response(tokens, *outcome), kJson);
  }

  // stream = true: server-sent events, written by httplib's chunked provider on this
  // connection's thread as tokens come.
  static void Stream(httplib::Response& res, std::shared_ptr<HttpGeneration> generation,
                     std::shared_ptr<OpenAiResponseFormatter> formatter,
                     std::shared_ptr<void> in_flight) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // proxies: do not buffer the events
    res.set_chunked_content_provider(
        "text/event-stream",
        [generation, formatter, started = false](size_t, httplib::DataSink& sink) mutable {
          std::string out;
          if (!started) {
            out = formatter->StreamStart();
            started = true;
          }
          std::vector<SampledToken> tokens;
          for (;;) {
            std::optional<GenerationOutcome> outcome = generation->Take(kPollSlice, tokens);
            if (!tokens.empty()) {
              out += formatter->StreamTokens(tokens);
              tokens.clear();
            }
            if (outcome.has_value()) {
              out += outcome->status.ok() ? formatter->StreamEnd(*outcome)
                                          : formatter->StreamError(outcome->status);
              if (!sink.write(out.data(), out.size())) return false;
              sink.done();
              return true;
            }
            // A failed write means the client is gone; httplib then calls the releaser.
            if (!out.empty()) return sink.write(out.data(), out.size());
            if (runtime::HttpClientGone()) return false;
          }
        },
        // Runs once the response is done with, written whole or not: a generation still
        // running has lost its reader.
        [generation, in_flight](bool) { generation->Cancel(); });
  }

  OpenAiHttpServer& s_;
};

OpenAiHttpServer::OpenAiHttpServer(ServingMetrics* metrics) : metrics_(metrics) {
  std::random_device rd;
  id_prefix_ = absl::StrFormat("%08x", rd());
  seed_base_ = (uint64_t{rd()} << 32) | rd();
  started_unix_ = absl::ToUnixSeconds(absl::Now());
}

absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> OpenAiHttpServer::Start(
    const runtime::HttpServerOptions& options, ServingMetrics* metrics) {
  std::unique_ptr<OpenAiHttpServer> server(new OpenAiHttpServer(metrics));
  server->routes_ = std::make_unique<Routes>(server.get());
  Routes* routes = server->routes_.get();
  runtime::HttpServerOptions o = options;
  // The server's own errors (unknown path, wrong method, body too large) in OpenAI's shape too.
  o.error_body = [](int status, const std::string& reason) {
    OpenAiError e;
    e.http_status = status;
    e.type = status >= 500 ? "server_error" : "invalid_request_error";
    e.message = reason;
    return std::make_pair(std::string(kJson), OpenAiErrorJson(e));
  };
  std::vector<runtime::HttpRoute> table;
  table.push_back({"GET", "/v1/models", [routes](const httplib::Request&, httplib::Response& res) {
                     routes->Models(res);
                   }});
  table.push_back({"GET", "/health", [routes](const httplib::Request&, httplib::Response& res) {
                     routes->Health(res);
                   }});
  table.push_back(
      {"POST", "/v1/completions", [routes](const httplib::Request& req, httplib::Response& res) {
         routes->Completion(OpenAiEndpoint::kCompletions, req, res);
       }});
  table.push_back({"POST", "/v1/chat/completions",
                   [routes](const httplib::Request& req, httplib::Response& res) {
                     routes->Completion(OpenAiEndpoint::kChatCompletions, req, res);
                   }});
  auto http = runtime::HttpServer::Start(o, std::move(table));
  if (!http.ok()) return http.status();
  server->http_ = *std::move(http);
  return server;
}

OpenAiHttpServer::~OpenAiHttpServer() { Shutdown(); }

void OpenAiHttpServer::Shutdown() {
  draining_.store(true);
  if (http_ != nullptr) http_->Shutdown();
}

}  // namespace kvshare
