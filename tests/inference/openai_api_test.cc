// The OpenAI JSON mapping (inference_service/openai_api.h) on its own: request bodies into the
// wire request, refusals into OpenAI errors naming the field, and generations into responses
// and server-sent events.
#include "inference_service/openai_api.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvshare {
namespace {

using Json = nlohmann::json;

OpenAiRequest Parse(OpenAiEndpoint endpoint, const std::string& body) {
  auto r = ParseOpenAiRequest(endpoint, body, /*default_seed=*/77);
  EXPECT_TRUE(r.ok()) << r.status() << " for " << body;
  return r.ok() ? *r : OpenAiRequest();
}

// The OpenAI error a body is refused with.
OpenAiError Refusal(OpenAiEndpoint endpoint, const std::string& body) {
  auto r = ParseOpenAiRequest(endpoint, body, 77);
  EXPECT_FALSE(r.ok()) << body;
  return OpenAiErrorFrom(r.ok() ? absl::OkStatus() : r.status(), endpoint);
}

constexpr auto kCompletions = OpenAiEndpoint::kCompletions;
constexpr auto kChat = OpenAiEndpoint::kChatCompletions;

TEST(OpenAiApiTest, CompletionFieldsMapOntoTheWireRequest) {
  const OpenAiRequest r = Parse(kCompletions, R"({"model": "m", "prompt": "Once upon",
      "max_tokens": 12, "temperature": 0.5, "top_p": 0.9, "seed": 5, "stop": ["\n", "."],
      "logprobs": 3, "kvshare_strategy_version": 4, "top_k": 40, "stream": true,
      "stream_options": {"include_usage": true}, "user": "ignored"})");
  EXPECT_EQ(r.wire.text(), "Once upon");
  EXPECT_EQ(r.wire.max_tokens(), 12);
  EXPECT_FLOAT_EQ(r.wire.temperature(), 0.5f);
  EXPECT_FLOAT_EQ(r.wire.top_p(), 0.9f);
  EXPECT_EQ(r.wire.seed(), 5u);
  ASSERT_EQ(r.wire.stop_size(), 2);
  EXPECT_EQ(r.wire.stop(1), ".");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.wire.logprobs(), 3);
  EXPECT_EQ(r.wire.strategy_version(), 4u);
  EXPECT_EQ(r.wire.top_k(), 40);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(OpenAiApiTest, DefaultsAreOpenAisNotTheWiresGreedy) {
  const OpenAiRequest r = Parse(kCompletions, R"({"prompt": "x"})");
  EXPECT_FLOAT_EQ(r.wire.temperature(), 1.0f);  // OpenAI's default; the wire's is 0 (greedy)
  EXPECT_FALSE(r.wire.has_max_tokens());        // the worker's --default-max-tokens
  EXPECT_EQ(r.wire.seed(), 77u);                // the server's per-request seed
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.logprobs);
  EXPECT_EQ(r.wire.logprobs(), 0);
}

TEST(OpenAiApiTest, PromptFormsAreOneStringOrOneListOfTokenIds) {
  EXPECT_EQ(Parse(kCompletions, R"({"prompt": ["a b"]})").wire.text(), "a b");
  const OpenAiRequest ids = Parse(kCompletions, R"({"prompt": [1, 2, 3]})");
  ASSERT_EQ(ids.wire.token_ids().ids_size(), 3);
  EXPECT_EQ(ids.wire.token_ids().ids(2), 3);
  EXPECT_EQ(Parse(kCompletions, R"({"prompt": [[7, 8]]})").wire.token_ids().ids(1), 8);
  EXPECT_EQ(Refusal(kCompletions, R"({"prompt": ["a", "b"]})").param, "prompt");
  EXPECT_EQ(Refusal(kCompletions, R"({"prompt": [1, "b"]})").param, "prompt[1]");
  EXPECT_EQ(Refusal(kCompletions, R"({"prompt": 5})").param, "prompt");
  EXPECT_EQ(Refusal(kCompletions, R"({"max_tokens": 5})").param, "prompt");
}

TEST(OpenAiApiTest, ChatMessagesTakeStringsOrTextPartsAndDeveloperIsSystem) {
  const OpenAiRequest r = Parse(kChat, R"({"messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}],
      "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 0})");
  ASSERT_EQ(r.wire.chat().messages_size(), 3);
  EXPECT_EQ(r.wire.chat().messages(0).role(), "system");
  EXPECT_EQ(r.wire.chat().messages(1).content(), "Hi there");
  EXPECT_EQ(r.wire.chat().messages(2).content(), "");
  EXPECT_EQ(r.wire.max_tokens(), 9);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  EXPECT_EQ(r.wire.logprobs(), 1);  // the engine reports at least one alternative
  const OpenAiError image =
      Refusal(kChat, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})");
  EXPECT_EQ(image.param, "messages[0].content[0]");
  EXPECT_EQ(Refusal(kChat, R"({"messages": [{"content": "x"}]})").param, "messages[0].role");
}

TEST(OpenAiApiTest, UnsupportedOrMistypedFieldsAre400NamingTheField) {
  const std::string chat = R"("messages": [{"role": "user", "content": "x"}])";
  struct Case {
    std::string fields;
    std::string param;
  };
  for (const Case& c :
       std::vector<Case>{{R"("n": 2)", "n"},
                         {R"("max_tokens": "ten")", "max_tokens"},
                         {R"("max_tokens": 1.5)", "max_tokens"},
                         {R"("temperature": "hot")", "temperature"},
                         {R"("stop": [1])", "stop[0]"},
                         {R"("stream": 1)", "stream"},
                         {R"("stream_options": {"include_usage": true})", "stream_options"},
                         {R"("presence_penalty": 0.5)", "presence_penalty"},
                         {R"("logit_bias": {"5": 1})", "logit_bias"},
                         {R"("tools": [{"type": "function"}])", "tools"},
                         {R"("response_format": {"type": "json_object"})", "response_format"},
                         {R"("top_logprobs": 2)", "top_logprobs"},
                         {R"("kvshare_strategy_version": -1)", "kvshare_strategy_version"}}) {
    const OpenAiError e = Refusal(kChat, "{" + chat + ", " + c.fields + "}");
    EXPECT_EQ(e.http_status, 400) << c.fields;
    EXPECT_EQ(e.type, "invalid_request_error") << c.fields;
    EXPECT_EQ(e.param, c.param) << c.fields << ": " << e.message;
    EXPECT_EQ(e.message.rfind(c.param, 0), 0u)
        << "the message starts with the field: " << e.message;
  }
  // Their defaults are accepted (clients send them).
  Parse(kChat, "{" + chat + R"(, "n": 1, "presence_penalty": 0, "tools": [], "logit_bias": {}})");
  EXPECT_EQ(Refusal(kChat, "not json").param, "");
  EXPECT_EQ(Refusal(kChat, "[1]").http_status, 400);
}

TEST(OpenAiApiTest, RefusalsFromTheWorkerMapToOpenAiNamesAndStatuses) {
  // BuildGenerationRequest and the scheduler speak the wire's field names.
  struct Case {
    absl::Status status;
    OpenAiEndpoint endpoint;
    int http;
    std::string param, message_start;
  };
  const std::vector<Case> cases = {
      {absl::InvalidArgumentError("text: empty prompt"), kCompletions, 400, "prompt", "prompt:"},
      {absl::InvalidArgumentError("token_ids.ids[3] = 900 out of range [0, 512)"), kCompletions,
       400, "prompt[3]", "prompt[3] ="},
      {absl::InvalidArgumentError("chat.messages[1].role \"tool\" must be \"system\", ..."), kChat,
       400, "messages[1].role", "messages[1].role \"tool\""},
      {absl::FailedPreconditionError("strategy_version 9 is not held by this worker (held: [1])"),
       kChat, 400, "kvshare_strategy_version", "kvshare_strategy_version 9"},
      {absl::InvalidArgumentError("logprobs 30 must be in [0, 20]"), kChat, 400, "top_logprobs",
       "top_logprobs 30"},
      {absl::InvalidArgumentError("logprobs 30 must be in [0, 20]"), kCompletions, 400, "logprobs",
       "logprobs 30"},
      {absl::InvalidArgumentError("max_tokens 9000 must be in [1, 512]"), kChat, 400, "max_tokens",
       "max_tokens 9000"},
      {absl::ResourceExhaustedError("admission queue full"), kChat, 429, "", "admission"},
      {absl::UnavailableError("worker is draining"), kChat, 503, "", "worker is draining"},
      {absl::InternalError("engine failed"), kChat, 500, "", "engine failed"},
  };
  for (const Case& c : cases) {
    const OpenAiError e = OpenAiErrorFrom(c.status, c.endpoint);
    EXPECT_EQ(e.http_status, c.http) << c.status;
    EXPECT_EQ(e.param, c.param) << c.status;
    EXPECT_EQ(e.message.rfind(c.message_start, 0), 0u) << e.message;
  }
  const OpenAiError context = OpenAiErrorFrom(
      absl::InvalidArgumentError("prompt (500 tokens) + max_tokens (100) = 600 tokens exceeds "
                                 "the model's context of 512 tokens"),
      kChat);
  EXPECT_EQ(context.param, "messages");
  EXPECT_EQ(context.code, "context_length_exceeded");

  const Json j = Json::parse(OpenAiErrorJson(OpenAiErrorFrom(cases[0].status, kCompletions)));
  EXPECT_EQ(j["error"]["param"], "prompt");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_EQ(j["error"]["message"], "prompt: empty prompt");
}

SampledToken Token(int32_t id, std::string piece, double logprob = -0.5) {
  SampledToken t;
  t.id = id;
  t.piece = std::move(piece);
  t.has_logprobs = true;
  t.logprob = logprob;
  t.top = {{id, t.piece, logprob}, {id + 1, "alt", -2.0}};
  return t;
}

OpenAiResponseContext Context() {
  OpenAiResponseContext c;
  c.id = "cmpl-x-1";
  c.model = "stories260K";
  c.created = 1700000000;
  c.strategy_version = 3;
  return c;
}

GenerationOutcome Outcome(FinishReason finish, int prompt, int completion) {
  GenerationOutcome o;
  o.finish = finish;
  o.prompt_tokens = prompt;
  o.completion_tokens = completion;
  return o;
}

// The JSON objects of a stream's "data: " events, and whether it ended with [DONE].
std::vector<Json> Events(const std::string& sse, bool* done) {
  std::vector<Json> out;
  *done = false;
  size_t pos = 0;
  while ((pos = sse.find("data: ", pos)) != std::string::npos) {
    const size_t end = sse.find("\n\n", pos);
    const std::string data = sse.substr(pos + 6, end - pos - 6);
    EXPECT_FALSE(*done) << "an event after [DONE]";
    if (data == "[DONE]") {
      *done = true;
    } else {
      out.push_back(Json::parse(data));
    }
    pos = end + 2;
  }
  return out;
}

TEST(OpenAiApiTest, WholeCompletionCarriesTextFinishUsageAndLogprobs) {
  OpenAiRequest request = Parse(kCompletions, R"({"prompt": "x", "logprobs": 1})");
  OpenAiResponseFormatter f(request, Context());
  const Json j = Json::parse(f.Response({Token(5, "Hello"), Token(6, " world", -1.25)},
                                        Outcome(FinishReason::kEos, 4, 2)));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"], "cmpl-x-1");
  EXPECT_EQ(j["kvshare_strategy_version"], 3);
  EXPECT_EQ(j["choices"][0]["text"], "Hello world");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");  // EOS is OpenAI's "stop"
  EXPECT_EQ(j["usage"]["total_tokens"], 6);
  const Json& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], Json({"Hello", " world"}));
  EXPECT_EQ(lp["token_logprobs"][1], -1.25);
  EXPECT_EQ(lp["text_offset"], Json({0, 5}));
  EXPECT_EQ(lp["top_logprobs"][0].size(), 1u);  // logprobs = 1: one alternative shown
}

TEST(OpenAiApiTest, WholeChatCompletionIsAnAssistantMessage) {
  OpenAiRequest request = Parse(
      kChat,
      R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 2})");
  OpenAiResponseFormatter f(request, Context());
  const Json j = Json::parse(f.Response({Token(5, "Hi")}, Outcome(FinishReason::kLength, 9, 1)));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"], Json({{"role", "assistant"}, {"content", "Hi"}}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  const Json& c = j["choices"][0]["logprobs"]["content"][0];
  EXPECT_EQ(c["token"], "Hi");
  EXPECT_EQ(c["bytes"], Json({72, 105}));
  EXPECT_EQ(c["top_logprobs"].size(), 2u);
  EXPECT_EQ(c["top_logprobs"][1]["token"], "alt");
}

TEST(OpenAiApiTest, StreamHoldsBackASplitCharacterAndEndsWithUsageAndDone) {
  OpenAiRequest request = Parse(kChat, R"({"messages": [{"role": "user", "content": "x"}],
      "stream": true, "stream_options": {"include_usage": true}})");
  OpenAiResponseFormatter f(request, Context());
  std::string sse = f.StreamStart();
  sse += f.StreamTokens({Token(1, "caf")});
  // "é" is C3 A9, split over two tokens: nothing goes out until it is whole.
  EXPECT_EQ(f.StreamTokens({Token(2, "\xC3")}), "");
  sse += f.StreamTokens({Token(3, "\xA9!")});
  sse += f.StreamEnd(Outcome(FinishReason::kStop, 7, 3));
  bool done = false;
  const std::vector<Json> events = Events(sse, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(events[1]["choices"][0]["delta"]["content"], "caf");
  EXPECT_EQ(events[2]["choices"][0]["delta"]["content"], "\xC3\xA9!");
  EXPECT_TRUE(events[2]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(events[3]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(events[3]["choices"][0]["delta"], Json::object());
  EXPECT_TRUE(events[4]["choices"].empty());
  EXPECT_EQ(events[4]["usage"]["completion_tokens"], 3);
  for (const Json& e : events) EXPECT_EQ(e["object"], "chat.completion.chunk");
}

TEST(OpenAiApiTest, StreamFlushesBytesThatNeverFormACharacterAsReplacement) {
  OpenAiRequest request = Parse(kCompletions, R"({"prompt": "x", "stream": true})");
  OpenAiResponseFormatter f(request, Context());
  EXPECT_EQ(f.StreamStart(), "");
  EXPECT_EQ(f.StreamTokens({Token(2, "\xE2\x82")}), "");
  bool done = false;
  const std::vector<Json> events = Events(f.StreamEnd(Outcome(FinishReason::kLength, 1, 1)), &done);
  ASSERT_EQ(events.size(), 1u);  // no usage chunk unless asked for
  EXPECT_TRUE(done);
  EXPECT_EQ(events[0]["choices"][0]["text"], "\xEF\xBF\xBD");  // U+FFFD
  EXPECT_EQ(events[0]["choices"][0]["finish_reason"], "length");
}

TEST(OpenAiApiTest, StreamErrorIsAnErrorEventThenDone) {
  OpenAiRequest request = Parse(kCompletions, R"({"prompt": "x", "stream": true})");
  OpenAiResponseFormatter f(request, Context());
  bool done = false;
  const std::vector<Json> events =
      Events(f.StreamError(absl::UnavailableError("drain grace ran out")), &done);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(done);
  EXPECT_EQ(events[0]["error"]["message"], "drain grace ran out");
  EXPECT_EQ(events[0]["error"]["type"], "service_unavailable");
}

TEST(OpenAiApiTest, ModelsListsTheOneModel) {
  const Json j = Json::parse(OpenAiModelsJson("stories260K", 1700000000, 512, "abc"));
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "stories260K");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["max_model_len"], 512);
}

}  // namespace
}  // namespace kvshare
