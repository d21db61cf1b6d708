// The OpenAI-compatible HTTP front end (inference_service/openai_http.h) over a real worker on
// loopback (stories260K; SmolLM2 for the disconnects): the same scheduler and outputs as gRPC
// Generate, the refusals with their HTTP statuses (400 naming the field, 429 on a full queue, 503
// while loading or draining), and a client that disconnects cancelling its request and freeing its
// KV blocks.
#include "inference_service/openai_http.h"

#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/inference/worker_fixture.h"
#include "tests/support/http_probe.h"

namespace kvshare {
namespace {

using Json = nlohmann::json;

class OpenAiHttpTest : public ::testing::Test {
 protected:
  // A stories260K worker, its gRPC server and the HTTP front end, both loaded unless `ready`
  // is false.
  void StartWorker(WorkerOptions options, bool ready = true) {
    worker_ = testing::LoopbackWorker::Start(options, ready);
    ASSERT_NE(worker_, nullptr);
    runtime::HttpServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    auto http = OpenAiHttpServer::Start(o, worker_->metrics.get());
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
    if (ready) http_->SetWorker(worker_->worker.get());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", http_->port());
    client_->set_read_timeout(60, 0);
  }
  void TearDown() override {
    if (http_ != nullptr) http_->Shutdown();
  }

  // POST `body` to `path`: {status, body}.
  std::pair<int, std::string> Post(const std::string& path, const std::string& body) {
    auto res = client_->Post(path.c_str(), body, "application/json");
    if (!res) return {0, ""};
    return {res->status, res->body};
  }

  std::unique_ptr<testing::LoopbackWorker> worker_;
  std::unique_ptr<OpenAiHttpServer> http_;
  std::unique_ptr<httplib::Client> client_;
};

// The JSON of each "data: " event and whether the stream ended with [DONE].
std::vector<Json> Events(const std::string& sse, bool* done) {
  std::vector<Json> out;
  *done = false;
  size_t pos = 0;
  while ((pos = sse.find("data: ", pos)) != std::string::npos) {
    const size_t end = sse.find("\n\n", pos);
    if (end == std::string::npos) break;
    const std::string data = sse.substr(pos + 6, end - pos - 6);
    if (data == "[DONE]") {
      *done = true;
    } else {
      out.push_back(Json::parse(data));
    }
    pos = end + 2;
  }
  return out;
}

TEST_F(OpenAiHttpTest, GreedyCompletionMatchesGrpcGenerateTokenForToken) {
  StartWorker(testing::StoriesWorkerOptions());
  v1::GenerateRequest grpc_request;
  grpc_request.set_text("Once upon a time");
  grpc_request.set_max_tokens(24);
  const testing::Streamed grpc = testing::Collect(*worker_->stub, grpc_request);
  ASSERT_TRUE(grpc.status.ok()) << grpc.status.error_message();

  auto [status, body] =
      Post("/v1/completions", R"({"model": "any", "prompt": "Once upon a time", "max_tokens": 24,
                             "temperature": 0})");
  ASSERT_EQ(status, 200) << body;
  const Json j = Json::parse(body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "stories260K");
  EXPECT_EQ(j["choices"][0]["text"], grpc.text);
  EXPECT_EQ(j["usage"]["completion_tokens"], grpc.end.usage().completion_tokens());
  EXPECT_EQ(j["usage"]["prompt_tokens"], grpc.start.prompt_tokens());
  EXPECT_EQ(j["choices"][0]["finish_reason"],
            grpc.end.finish_reason() == v1::FINISH_REASON_LENGTH ? "length" : "stop");

  // Streamed, the same text arrives in chunks, then the finish, the usage and [DONE].
  auto [s2, sse] = Post("/v1/completions",
                        R"({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                            "stream": true, "stream_options": {"include_usage": true}})");
  ASSERT_EQ(s2, 200) << sse;
  bool done = false;
  const std::vector<Json> events = Events(sse, &done);
  EXPECT_TRUE(done);
  ASSERT_GE(events.size(), 3u);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) text += events[i]["choices"][0]["text"];
  EXPECT_EQ(text, grpc.text);
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"],
            j["choices"][0]["finish_reason"]);
  EXPECT_EQ(events.back()["usage"], j["usage"]);
  // Both protocols went through the one scheduler and its metrics.
  EXPECT_EQ(worker_->metrics->requests_value("length") + worker_->metrics->requests_value("eos") +
                worker_->metrics->requests_value("stop"),
            3);
  EXPECT_TRUE(worker_->WaitForEmptyPool());
}

TEST_F(OpenAiHttpTest, LogprobsOfAGreedyTokenAreTheTopAlternative) {
  StartWorker(testing::StoriesWorkerOptions());
  auto [status, body] = Post("/v1/completions", R"({"prompt": "Once upon a time",
      "max_tokens": 6, "temperature": 0, "logprobs": 2})");
  ASSERT_EQ(status, 200) << body;
  const Json lp = Json::parse(body)["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    const double chosen = lp["token_logprobs"][i];
    EXPECT_LE(chosen, 0.0);
    double best = -1e9;
    for (const auto& [text, value] : lp["top_logprobs"][i].items())
      best = std::max(best, double(value));
    EXPECT_DOUBLE_EQ(chosen, best) << "token " << i;  // greedy takes the most likely token
  }
}

TEST_F(OpenAiHttpTest, RefusalsAreOpenAiErrorsWithTheirStatuses) {
  WorkerOptions options = testing::StoriesWorkerOptions();
  StartWorker(options);
  struct Case {
    std::string body;
    int status;
    std::string param;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"prompt": "x", "n": 3})", 400, "n"},
           {R"({"prompt": "x", "max_tokens": 100000})", 400, "max_tokens"},
           {R"({"prompt": "x", "temperature": -1})", 400, "temperature"},
           {R"({"prompt": "x", "kvshare_strategy_version": 42})", 400, "kvshare_strategy_version"},
           {R"({"prompt": ""})", 400, "prompt"},
           {"{", 400, ""}}) {
    auto [status, body] = Post("/v1/completions", c.body);
    EXPECT_EQ(status, c.status) << c.body << " -> " << body;
    const Json e = Json::parse(body)["error"];
    EXPECT_EQ(e["type"], "invalid_request_error");
    if (c.param.empty()) {
      EXPECT_TRUE(e["param"].is_null()) << body;
    } else {
      EXPECT_EQ(e["param"], c.param) << body;
    }
  }
  // stories260K has no chat template: the chat endpoint says so, naming messages.
  auto [chat_status, chat_body] =
      Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_EQ(chat_status, 400) << chat_body;
  EXPECT_EQ(Json::parse(chat_body)["error"]["param"], "messages");
  // The server's own errors are in the same shape.
  auto missing = client_->Get("/v1/engines");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_TRUE(Json::parse(missing->body)["error"].is_object());
  EXPECT_EQ(worker_->metrics->requests_value("invalid_argument") +
                worker_->metrics->requests_value("failed_precondition"),
            7);

  // Draining: 503 (the scheduler refuses, as for gRPC).
  worker_->worker->scheduler().StopAdmitting();
  auto [drain_status, drain_body] = Post("/v1/completions", R"({"prompt": "x"})");
  EXPECT_EQ(drain_status, 503) << drain_body;
  EXPECT_EQ(Json::parse(drain_body)["error"]["type"], "service_unavailable");
}

TEST_F(OpenAiHttpTest, FullQueueIs429AndLoadingIs503) {
  WorkerOptions options = testing::StoriesWorkerOptions();
  options.scheduler.max_queue = 0;  // every request finds the queue full
  StartWorker(options, /*ready=*/false);
  auto [loading, loading_body] = Post("/v1/completions", R"({"prompt": "x"})");
  EXPECT_EQ(loading, 503) << loading_body;
  auto models = client_->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 503);
  EXPECT_EQ(client_->Get("/health")->status, 503);

  ASSERT_TRUE(worker_->Load());
  http_->SetWorker(worker_->worker.get());
  EXPECT_EQ(client_->Get("/health")->status, 200);
  auto [full, full_body] = Post("/v1/completions", R"({"prompt": "x", "max_tokens": 2})");
  EXPECT_EQ(full, 429) << full_body;
  EXPECT_EQ(Json::parse(full_body)["error"]["code"], "queue_full");
  EXPECT_EQ(worker_->metrics->requests_value("resource_exhausted"), 1);
  const Json list = Json::parse(client_->Get("/v1/models")->body);
  EXPECT_EQ(list["data"][0]["id"], "stories260K");
}

// Sends `body` to /v1/completions on a raw connection, reads until `marker` (or 30 s), and
// closes the connection.
void PostAndHangUp(int port, const std::string& body, const std::string& marker) {
  const int fd = testing::ConnectLoopback(port, absl::Seconds(30));
  ASSERT_GE(fd, 0);
  const std::string request = absl::StrCat(
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
      "application/json\r\nContent-Length: ",
      body.size(), "\r\n\r\n", body);
  ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string got;
  char buf[1024];
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while (got.find(marker) == std::string::npos && absl::Now() < end) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(got.find(marker), std::string::npos) << got;
  ::close(fd);
}

TEST_F(OpenAiHttpTest, ClientDisconnectCancelsTheRequestAndFreesItsBlocks) {
  // SmolLM2, slow enough per token that 480 of them outlast noticing the hang-up on any machine.
  StartWorker(testing::SmolLm2WorkerOptions());
  // Streamed: hang up after the first event. ignore_eos keeps it generating to max_tokens.
  PostAndHangUp(http_->port(),
                R"({"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0,
                    "ignore_eos": true, "stream": true})",
                "data: ");
  EXPECT_TRUE(worker_->WaitForEmptyPool(absl::Seconds(30)));
  EXPECT_EQ(worker_->metrics->requests_value("cancelled"), 1);

  // Whole response: hang up once the request is sent.
  PostAndHangUp(http_->port(),
                R"({"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0,
                    "ignore_eos": true})",
                "");
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while (worker_->metrics->requests_value("cancelled") < 2 && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(worker_->metrics->requests_value("cancelled"), 2);
  EXPECT_EQ(worker_->metrics->requests_value("length"), 0);
  EXPECT_TRUE(worker_->WaitForEmptyPool(absl::Seconds(30)));
  EXPECT_TRUE(http_->WaitForResponses(absl::Seconds(10)));
}

}  // namespace
}  // namespace kvshare
