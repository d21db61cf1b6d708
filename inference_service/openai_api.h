// The OpenAI-compatible API's JSON <-> kvshare's Generate: request bodies of POST
// /v1/completions and /v1/chat/completions parsed into a v1::GenerateRequest (which
// BuildGenerationRequest then validates and tokenises exactly as for gRPC Generate, so both
// front ends accept and refuse the same requests), and the responses, stream chunks and errors
// in OpenAI's shapes. No I/O here: openai_http.h serves it.
//
// Request fields (null is the same as absent; fields not listed are ignored, as vLLM and
// llama-server do):
//   completions        prompt: a string, [string], [token ids] or [[token ids]] (one prompt)
//   chat completions   messages: [{role: system|developer|user|assistant, content: string or
//                      [{type: "text", text}]}]; developer is treated as system
//   both               max_tokens (chat also max_completion_tokens; absent = the worker's
//                      --default-max-tokens), temperature (default 1, as OpenAI; 0 = greedy),
//                      top_p, seed (absent: `default_seed`), stop (string or [string]),
//                      n (1 only), stream, stream_options.include_usage, model (any string:
//                      a worker serves one model and answers with its name)
//   logprobs           completions: logprobs = k (the token's log-probability and k
//                      alternatives); chat: logprobs = true and top_logprobs = k
//   extensions         kvshare_strategy_version (pin a strategy version the worker holds),
//                      top_k, ignore_eos
// Refused with 400 naming the field: a wrong JSON type, n != 1, best_of != 1, echo, suffix,
// non-zero presence/frequency penalties, logit_bias, tools/functions, a response_format other
// than text, stream_options without stream.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "inference_service/generation.h"
#include "kvshare/v1/inference.pb.h"

namespace kvshare {

enum class OpenAiEndpoint { kCompletions, kChatCompletions };

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  v1::GenerateRequest wire;    // prompt, sampling, stop, logprobs, strategy pin
  bool stream = false;         // server-sent events
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  bool logprobs = false;       // report each token's log-probability
  int top_logprobs = 0;        // and this many alternatives
};

// Parses a request body for `endpoint`. INVALID_ARGUMENT whose message starts with the OpenAI
// name of the field at fault (OpenAiErrorFrom turns it into `param`).
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, std::string_view body,
                                                 uint64_t default_seed);

// {"error": {"message", "type", "param", "code"}} and the HTTP status it goes with.
struct OpenAiError {
  int http_status = 500;
  std::string type;
  std::string message;
  std::string param;  // the request field at fault; "" = null
  std::string code;   // "" = null
};

// The error a refusal becomes, for a request to `endpoint`: INVALID_ARGUMENT and
// FAILED_PRECONDITION (a strategy version the worker does not hold) 400 with `param` the
// field (the wire's names mapped to OpenAI's: text -> prompt, chat.messages -> messages,
// strategy_version -> kvshare_strategy_version, ...; the message says the same name);
// RESOURCE_EXHAUSTED 429 (the admission queue is full); UNAVAILABLE 503 (loading, draining,
// stopped); NOT_FOUND 404; DEADLINE_EXCEEDED 504; anything else 500.
OpenAiError OpenAiErrorFrom(const absl::Status& status, OpenAiEndpoint endpoint);
std::string OpenAiErrorJson(const OpenAiError& error);

// What a response says about the model and the run.
struct OpenAiResponseContext {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  std::string model;
  int64_t created = 0;  // Unix seconds
  uint64_t strategy_version = 0;
  std::string strategy_id;
};

// Formats one generation as a whole response or as server-sent events. Streamed text is held
// back while it ends inside a UTF-8 sequence, so no chunk splits a character; bytes that never
// form valid UTF-8 come out as U+FFFD. Not thread-safe (one per request).
class OpenAiResponseFormatter {
 public:
  OpenAiResponseFormatter(const OpenAiRequest& request, OpenAiResponseContext context);

  // stream = false: the body, from every token and the outcome (its status must be OK).
  std::string Response(const std::vector<SampledToken>& tokens, const GenerationOutcome& outcome);

  // stream = true, in order: StreamStart once (chat: the assistant role; completions: ""),
  // StreamTokens as tokens come (one chunk for all of them; "" when nothing can be sent yet),
  // then StreamEnd (the held-back text, the finish reason, the usage chunk when asked for, and
  // "data: [DONE]") or, for an outcome that is not OK, StreamError (an error event, then
  // [DONE]).
  std::string StreamStart();
  std::string StreamTokens(const std::vector<SampledToken>& tokens);
  std::string StreamEnd(const GenerationOutcome& outcome);
  std::string StreamError(const absl::Status& status);

 private:
  bool chat() const { return request_.endpoint == OpenAiEndpoint::kChatCompletions; }
  // The longest prefix of held + `more` that does not end inside a UTF-8 sequence; the rest is
  // held for the next call.
  std::string TakeCompleteUtf8(const std::string& more);

  const OpenAiRequest request_;
  const OpenAiResponseContext context_;
  std::string held_;       // the start of an incomplete UTF-8 sequence
  size_t text_bytes_ = 0;  // streamed so far (completions' text_offset)
};

// GET /v1/models: the one model a worker serves.
std::string OpenAiModelsJson(const std::string& model, int64_t created, int max_model_len,
                             const std::string& fingerprint);

}  // namespace kvshare
