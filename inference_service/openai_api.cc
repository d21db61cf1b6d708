#include "inference_service/openai_api.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace kvshare {
namespace {

using Json = nlohmann::ordered_json;

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// Dumps `j` with invalid UTF-8 (a token that is part of a character) replaced by U+FFFD
// instead of throwing.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string TypeName(const Json& j) {
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  return absl::StrCat("a", j.is_array() || j.is_object() ? "n " : " ", j.type_name());
}

// The value of `key` in `body` when present and not null.
const Json* Field(const Json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<bool> Bool(const Json& v, const std::string& name) {
  if (!v.is_boolean())
    return Invalid(absl::StrFormat("%s: expected a boolean, got %s", name, TypeName(v)));
  return v.get<bool>();
}

absl::StatusOr<double> Number(const Json& v, const std::string& name) {
  if (!v.is_number())
    return Invalid(absl::StrFormat("%s: expected a number, got %s", name, TypeName(v)));
  return v.get<double>();
}

// An integer in [lo, hi] (JSON numbers with a fraction are refused).
absl::StatusOr<int64_t> Integer(const Json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) {
    return Invalid(absl::StrFormat("%s: expected an integer, got %s", name, TypeName(v)));
  }
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    return Invalid(absl::StrFormat("%s %d must be in [%d, %d]", name, v.get<uint64_t>(), lo, hi));
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    return Invalid(absl::StrFormat("%s %d must be in [%d, %d]", name, x, lo, hi));
  return x;
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

absl::Status ParsePrompt(const Json& body, v1::GenerateRequest& wire) {
  const Json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return Invalid("prompt: required");
  if (prompt->is_string()) {
    wire.set_text(prompt->get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt->is_array()) {
    return Invalid(
        absl::StrFormat("prompt: expected a string or an array, got %s", TypeName(*prompt)));
  }
  if (prompt->empty()) return Invalid("prompt: empty array");
  const Json* one = prompt;
  if ((*prompt)[0].is_string() || (*prompt)[0].is_array()) {
    if (prompt->size() != 1) {
      return Invalid(absl::StrFormat("prompt: %d prompts; this server takes one prompt per request",
                                     prompt->size()));
    }
    if ((*prompt)[0].is_string()) {
      wire.set_text((*prompt)[0].get<std::string>());
      return absl::OkStatus();
    }
    one = &(*prompt)[0];
  }
  // Token ids; BuildGenerationRequest checks they are in the vocabulary.
  v1::TokenIds* ids = wire.mutable_token_ids();
  for (size_t i = 0; i < one->size(); ++i) {
    auto id = Integer((*one)[i], absl::StrFormat("prompt[%d]", i), 0, kInt32Max);
    if (!id.ok()) return id.status();
    ids->add_ids(static_cast<int32_t>(*id));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> MessageContent(const Json& content, const std::string& name) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    return Invalid(absl::StrFormat("%s: expected a string or an array of text parts, got %s", name,
                                   TypeName(content)));
  }
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string part_name = absl::StrFormat("%s[%d]", name, i);
    const Json* type = part.is_object() ? Field(part, "type") : nullptr;
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text") {
      return Invalid(
          absl::StrFormat("%s: only {\"type\": \"text\"} parts are supported", part_name));
    }
    const Json* t = Field(part, "text");
    if (t == nullptr || !t->is_string()) {
      return Invalid(absl::StrFormat("%s.text: expected a string", part_name));
    }
    text += t->get<std::string>();
  }
  return text;
}

absl::Status ParseMessages(const Json& body, v1::GenerateRequest& wire) {
  const Json* messages = Field(body, "messages");
  if (messages == nullptr) return Invalid("messages: required");
  if (!messages->is_array()) {
    return Invalid(absl::StrFormat("messages: expected an array, got %s", TypeName(*messages)));
  }
  v1::ChatMessages* chat = wire.mutable_chat();
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& m = (*messages)[i];
    const std::string name = absl::StrFormat("messages[%d]", i);
    if (!m.is_object()) return Invalid(absl::StrFormat("%s: expected an object", name));
    const Json* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) {
      return Invalid(absl::StrFormat("%s.role: expected a string", name));
    }
    v1::ChatMessage* out = chat->add_messages();
    // OpenAI's newer name for the system prompt.
    out->set_role(role->get<std::string>() == "developer" ? "system" : role->get<std::string>());
    if (const Json* content = Field(m, "content")) {
      auto text = MessageContent(*content, name + ".content");
      if (!text.ok()) return text.status();
      out->set_content(*text);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseStop(const Json& stop, v1::GenerateRequest& wire) {
  if (stop.is_string()) {
    wire.add_stop(stop.get<std::string>());
    return absl::OkStatus();
  }
  if (!stop.is_array()) {
    return Invalid(
        absl::StrFormat("stop: expected a string or an array of strings, got %s", TypeName(stop)));
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (!stop[i].is_string()) {
      return Invalid(absl::StrFormat("stop[%d]: expected a string, got %s", i, TypeName(stop[i])));
    }
    wire.add_stop(stop[i].get<std::string>());
  }
  return absl::OkStatus();
}

// Fields kvshare does not implement: refused unless they ask for the default.
absl::Status RefuseUnsupported(const Json& body) {
  if (const Json* n = Field(body, "n")) {
    auto v = Integer(*n, "n", 1, 1);
    if (!v.ok()) return Invalid(absl::StrFormat("n %s: only n = 1 is supported", n->dump()));
  }
  if (const Json* b = Field(body, "best_of")) {
    if (!b->is_number_integer() || b->get<int64_t>() != 1) {
      return Invalid(absl::StrFormat("best_of %s: only best_of = 1 is supported", b->dump()));
    }
  }
  if (const Json* e = Field(body, "echo")) {
    if (!e->is_boolean() || e->get<bool>()) return Invalid("echo: not supported");
  }
  if (Field(body, "suffix") != nullptr) return Invalid("suffix: not supported");
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (const Json* p = Field(body, penalty)) {
      if (!p->is_number() || p->get<double>() != 0.0) {
        return Invalid(absl::StrFormat("%s %s: not supported (only 0)", penalty, p->dump()));
      }
    }
  }
  if (const Json* lb = Field(body, "logit_bias")) {
    if (!lb->is_object() || !lb->empty()) return Invalid("logit_bias: not supported");
  }
  for (const char* tools : {"tools", "functions", "tool_choice", "function_call"}) {
    if (const Json* t = Field(body, tools)) {
      if (!(t->is_array() && t->empty()) && !(t->is_string() && t->get<std::string>() == "none")) {
        return Invalid(absl::StrFormat("%s: tool calls are not supported", tools));
      }
    }
  }
  if (const Json* rf = Field(body, "response_format")) {
    const Json* type = rf->is_object() ? Field(*rf, "type") : nullptr;
    if (type == nullptr || *type != "text") {
      return Invalid("response_format: only {\"type\": \"text\"} is supported");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseLogprobs(OpenAiEndpoint endpoint, const Json& body, OpenAiRequest& r) {
  // Large values are left for BuildGenerationRequest to refuse against the worker's limit.
  if (endpoint == OpenAiEndpoint::kCompletions) {
    if (const Json* lp = Field(body, "logprobs")) {
      auto k = Integer(*lp, "logprobs", 0, kInt32Max);
      if (!k.ok()) return k.status();
      r.logprobs = true;
      r.top_logprobs = static_cast<int>(*k);
    }
  } else {
    if (const Json* lp = Field(body, "logprobs")) {
      auto on = Bool(*lp, "logprobs");
      if (!on.ok()) return on.status();
      r.logprobs = *on;
    }
    if (const Json* top = Field(body, "top_logprobs")) {
      auto k = Integer(*top, "top_logprobs", 0, kInt32Max);
      if (!k.ok()) return k.status();
      if (!r.logprobs) return Invalid("top_logprobs: needs logprobs = true");
      r.top_logprobs = static_cast<int>(*k);
    }
  }
  // The engine reports the token's log-probability with at least one alternative; the
  // formatter shows top_logprobs of them.
  if (r.logprobs) r.wire.set_logprobs(std::max(1, r.top_logprobs));
  return absl::OkStatus();
}

absl::Status ParseBody(OpenAiEndpoint endpoint, const Json& body, uint64_t default_seed,
                       OpenAiRequest& r) {
  if (!body.is_object()) {
    return Invalid(absl::StrFormat("request body: expected a JSON object, got %s", TypeName(body)));
  }
  v1::GenerateRequest& wire = r.wire;
  absl::Status s = RefuseUnsupported(body);
  if (!s.ok()) return s;
  if (const Json* model = Field(body, "model"); model != nullptr && !model->is_string()) {
    return Invalid(absl::StrFormat("model: expected a string, got %s", TypeName(*model)));
  }
  s = endpoint == OpenAiEndpoint::kCompletions ? ParsePrompt(body, wire)
                                               : ParseMessages(body, wire);
  if (!s.ok()) return s;

  const char* max_name = "max_tokens";
  const Json* max_tokens = Field(body, "max_tokens");
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    if (const Json* mct = Field(body, "max_completion_tokens")) {
      max_name = "max_completion_tokens";
      max_tokens = mct;
    }
  }
  if (max_tokens != nullptr) {
    // The range is the worker's (BuildGenerationRequest); this only keeps it an int32.
    auto v = Integer(*max_tokens, max_name, std::numeric_limits<int32_t>::min(), kInt32Max);
    if (!v.ok()) return v.status();
    wire.set_max_tokens(static_cast<int32_t>(*v));
  }
  wire.set_temperature(1.0f);
  if (const Json* t = Field(body, "temperature")) {
    auto v = Number(*t, "temperature");
    if (!v.ok()) return v.status();
    wire.set_temperature(static_cast<float>(*v));
  }
  if (const Json* p = Field(body, "top_p")) {
    auto v = Number(*p, "top_p");
    if (!v.ok()) return v.status();
    wire.set_top_p(static_cast<float>(*v));
  }
  if (const Json* k = Field(body, "top_k")) {
    // vLLM's extension; -1 is its "no limit".
    auto v = Integer(*k, "top_k", -1, kInt32Max);
    if (!v.ok()) return v.status();
    wire.set_top_k(*v < 0 ? 0 : static_cast<int32_t>(*v));
  }
  wire.set_seed(default_seed);
  if (const Json* seed = Field(body, "seed")) {
    if (!seed->is_number_integer()) {
      return Invalid(absl::StrFormat("seed: expected an integer, got %s", TypeName(*seed)));
    }
    wire.set_seed(seed->is_number_unsigned() ? seed->get<uint64_t>()
                                             : static_cast<uint64_t>(seed->get<int64_t>()));
  }
  if (const Json* stop = Field(body, "stop")) {
    s = ParseStop(*stop, wire);
    if (!s.ok()) return s;
  }
  if (const Json* ie = Field(body, "ignore_eos")) {
    auto v = Bool(*ie, "ignore_eos");
    if (!v.ok()) return v.status();
    wire.set_ignore_eos(*v);
  }
  if (const Json* pin = Field(body, "kvshare_strategy_version")) {
    if (!pin->is_number_unsigned() && !(pin->is_number_integer() && pin->get<int64_t>() >= 0)) {
      return Invalid(absl::StrFormat(
          "kvshare_strategy_version: expected a non-negative integer, got %s", pin->dump()));
    }
    wire.set_strategy_version(pin->get<uint64_t>());
  }
  s = ParseLogprobs(endpoint, body, r);
  if (!s.ok()) return s;
  if (const Json* stream = Field(body, "stream")) {
    auto v = Bool(*stream, "stream");
    if (!v.ok()) return v.status();
    r.stream = *v;
  }
  if (const Json* so = Field(body, "stream_options")) {
    if (!r.stream) return Invalid("stream_options: only allowed with stream = true");
    if (!so->is_object()) {
      return Invalid(absl::StrFormat("stream_options: expected an object, got %s", TypeName(*so)));
    }
    if (const Json* iu = Field(*so, "include_usage")) {
      auto v = Bool(*iu, "stream_options.include_usage");
      if (!v.ok()) return v.status();
      r.include_usage = *v;
    }
  }
  return absl::OkStatus();
}

// The request field a message starts with (letters, digits, '_', '.', '[', ']'), with the
// wire's names mapped to OpenAI's; "" when it names none.
std::pair<std::string, std::string> FieldOf(const std::string& message, OpenAiEndpoint endpoint) {
  size_t end = 0;
  while (end < message.size() &&
         (absl::ascii_isalnum(message[end]) || std::strchr("_.[]", message[end]) != nullptr)) {
    ++end;
  }
  const std::string field = message.substr(0, end);
  const bool chat = endpoint == OpenAiEndpoint::kChatCompletions;
  // wire name prefix -> OpenAI name
  const std::pair<const char*, const char*> renames[] = {
      {"chat.messages", "messages"},
      {"chat", "messages"},
      {"text", "prompt"},
      {"token_ids.ids", "prompt"},
      {"token_ids", "prompt"},
      {"strategy_version", "kvshare_strategy_version"},
      {"prompt", chat ? "messages" : "prompt"},
      {"logprobs", chat ? "top_logprobs" : "logprobs"},
  };
  for (const auto& [from, to] : renames) {
    const size_t n = std::strlen(from);
    if (field.compare(0, n, from) == 0 &&
        (field.size() == n || field[n] == '[' || field[n] == '.')) {
      const std::string renamed = absl::StrCat(to, field.substr(n));
      return {renamed, absl::StrCat(renamed, message.substr(end))};
    }
  }
  static const char* const kKnown[] = {"messages",
                                       "prompt",
                                       "max_tokens",
                                       "max_completion_tokens",
                                       "temperature",
                                       "top_p",
                                       "top_k",
                                       "seed",
                                       "stop",
                                       "n",
                                       "best_of",
                                       "echo",
                                       "suffix",
                                       "presence_penalty",
                                       "frequency_penalty",
                                       "logit_bias",
                                       "tools",
                                       "functions",
                                       "tool_choice",
                                       "function_call",
                                       "response_format",
                                       "logprobs",
                                       "top_logprobs",
                                       "stream",
                                       "stream_options",
                                       "model",
                                       "ignore_eos",
                                       "kvshare_strategy_version"};
  const std::string root = field.substr(0, field.find_first_of(".["));
  for (const char* known : kKnown) {
    if (root == known) return {field, message};
  }
  return {"", message};
}

const char* FinishReasonText(FinishReason r) {
  return r == FinishReason::kLength ? "length" : "stop";  // stop strings and end-of-generation
}

Json Usage(const GenerationOutcome& outcome) {
  return Json{{"prompt_tokens", outcome.prompt_tokens},
              {"completion_tokens", outcome.completion_tokens},
              {"total_tokens", outcome.prompt_tokens + outcome.completion_tokens}};
}

Json BytesOf(const std::string& s) {
  Json bytes = Json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// The length of the longest prefix of `s` that does not end inside a UTF-8 sequence (a lead
// byte whose continuation bytes have not all arrived). Invalid bytes count as complete.
size_t CompleteUtf8Prefix(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t need = (c & 0xE0) == 0xC0   ? 2
                        : (c & 0xF0) == 0xE0 ? 3
                        : (c & 0xF8) == 0xF0 ? 4
                                             : 1;
    return need > back ? n - back : n;
  }
  return n;
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, std::string_view body,
                                                 uint64_t default_seed) {
  Json json = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Invalid("request body: not valid JSON");
  OpenAiRequest r;
  r.endpoint = endpoint;
  absl::Status s = ParseBody(endpoint, json, default_seed, r);
  if (!s.ok()) return s;
  return r;
}

OpenAiError OpenAiErrorFrom(const absl::Status& status, OpenAiEndpoint endpoint) {
  OpenAiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: {
      e.http_status = 400;
      e.type = "invalid_request_error";
      std::tie(e.param, e.message) = FieldOf(e.message, endpoint);
      if (absl::StrContains(e.message, "exceeds the model's context")) {
        e.code = "context_length_exceeded";
      }
      break;
    }
    case absl::StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "queue_full";
      break;
    case absl::StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "service_unavailable";
      break;
    case absl::StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "not_found_error";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.type = "timeout";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

std::string OpenAiErrorJson(const OpenAiError& error) {
  auto or_null = [](const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); };
  return Dump(Json{{"error",
                    {{"message", error.message},
                     {"type", error.type},
                     {"param", or_null(error.param)},
                     {"code", or_null(error.code)}}}});
}

std::string OpenAiModelsJson(const std::string& model, int64_t created, int max_model_len,
                             const std::string& fingerprint) {
  return Dump(Json{{"object", "list"},
                   {"data",
                    {{{"id", model},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "kvshare"},
                      {"max_model_len", max_model_len},
                      {"kvshare_fingerprint", fingerprint}}}}});
}

OpenAiResponseFormatter::OpenAiResponseFormatter(const OpenAiRequest& request,
                                                 OpenAiResponseContext context)
    : request_(request), context_(std::move(context)) {}

namespace {

// The envelope every response and chunk shares.
Json Envelope(const OpenAiResponseContext& c, const char* object) {
  return Json{{"id", c.id},
              {"object", object},
              {"created", c.created},
              {"model", c.model},
              {"system_fingerprint", absl::StrFormat("kvshare-v%d", c.strategy_version)},
              {"kvshare_strategy_version", c.strategy_version}};
}

std::string Event(const Json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

}  // namespace

namespace {

// Log-probabilities of `tokens` in the endpoint's shape; `offset` is the completions'
// text_offset of the first token (advanced past them).
Json Logprobs(bool chat, int top, const std::vector<SampledToken>& tokens, size_t* offset) {
  if (chat) {
    Json content = Json::array();
    for (const SampledToken& t : tokens) {
      Json alts = Json::array();
      for (int i = 0; i < top && i < static_cast<int>(t.top.size()); ++i) {
        alts.push_back({{"token", t.top[i].text},
                        {"logprob", t.top[i].logprob},
                        {"bytes", BytesOf(t.top[i].text)}});
      }
      content.push_back({{"token", t.piece},
                         {"logprob", t.logprob},
                         {"bytes", BytesOf(t.piece)},
                         {"top_logprobs", alts}});
    }
    return Json{{"content", content}};
  }
  Json text = Json::array(), lps = Json::array(), tops = Json::array(), offsets = Json::array();
  for (const SampledToken& t : tokens) {
    text.push_back(t.piece);
    lps.push_back(t.logprob);
    Json alts = Json::object();
    for (int i = 0; i < top && i < static_cast<int>(t.top.size()); ++i) {
      auto it = alts.find(t.top[i].text);
      if (it == alts.end() || it->get<double>() < t.top[i].logprob) {
        alts[t.top[i].text] = t.top[i].logprob;
      }
    }
    tops.push_back(alts);
    offsets.push_back(*offset);
    *offset += t.piece.size();
  }
  return Json{
      {"tokens", text}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

}  // namespace

std::string OpenAiResponseFormatter::Response(const std::vector<SampledToken>& tokens,
                                              const GenerationOutcome& outcome) {
  std::string text;
  for (const SampledToken& t : tokens) text += t.piece;
  size_t offset = 0;
  const Json logprobs =
      request_.logprobs ? Logprobs(chat(), request_.top_logprobs, tokens, &offset) : Json(nullptr);
  Json choice = {
      {"index", 0}, {"logprobs", logprobs}, {"finish_reason", FinishReasonText(outcome.finish)}};
  if (chat()) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  Json j = Envelope(context_, chat() ? "chat.completion" : "text_completion");
  j["choices"] = Json::array({choice});
  j["usage"] = Usage(outcome);
  return Dump(j);
}

std::string OpenAiResponseFormatter::TakeCompleteUtf8(const std::string& more) {
  held_ += more;
  const size_t n = CompleteUtf8Prefix(held_);
  std::string out = held_.substr(0, n);
  held_.erase(0, n);
  return out;
}

std::string OpenAiResponseFormatter::StreamStart() {
  if (!chat()) return "";
  Json j = Envelope(context_, "chat.completion.chunk");
  j["choices"] = Json::array({{{"index", 0},
                               {"delta", {{"role", "assistant"}, {"content", ""}}},
                               {"logprobs", nullptr},
                               {"finish_reason", nullptr}}});
  return Event(j);
}

std::string OpenAiResponseFormatter::StreamTokens(const std::vector<SampledToken>& tokens) {
  std::string pieces;
  for (const SampledToken& t : tokens) pieces += t.piece;
  const std::string text = TakeCompleteUtf8(pieces);
  if (text.empty() && !(request_.logprobs && !tokens.empty())) return "";
  const Json logprobs = request_.logprobs
                            ? Logprobs(chat(), request_.top_logprobs, tokens, &text_bytes_)
                            : Json(nullptr);
  Json choice = {{"index", 0}, {"logprobs", logprobs}, {"finish_reason", nullptr}};
  if (chat()) {
    choice["delta"] = {{"content", text}};
  } else {
    choice["text"] = text;
  }
  Json j = Envelope(context_, chat() ? "chat.completion.chunk" : "text_completion");
  j["choices"] = Json::array({choice});
  return Event(j);
}

std::string OpenAiResponseFormatter::StreamEnd(const GenerationOutcome& outcome) {
  const char* object = chat() ? "chat.completion.chunk" : "text_completion";
  Json choice = {
      {"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReasonText(outcome.finish)}};
  // Bytes still held never completed a character: they go out now (as U+FFFD).
  const std::string rest = std::exchange(held_, "");
  if (chat()) {
    choice["delta"] = rest.empty() ? Json::object() : Json{{"content", rest}};
  } else {
    choice["text"] = rest;
  }
  Json last = Envelope(context_, object);
  last["choices"] = Json::array({choice});
  std::string out = Event(last);
  if (request_.include_usage) {
    Json usage = Envelope(context_, object);
    usage["choices"] = Json::array();
    usage["usage"] = Usage(outcome);
    out += Event(usage);
  }
  return out + "data: [DONE]\n\n";
}

std::string OpenAiResponseFormatter::StreamError(const absl::Status& status) {
  const OpenAiError e = OpenAiErrorFrom(status, request_.endpoint);
  return absl::StrCat("data: ", OpenAiErrorJson(e), "\n\n", "data: [DONE]\n\n");
}

}  // namespace kvshare
