// One Generate request as the scheduler sees it, and the sink it reports to.
//
// The server turns a wire request into a GenerationRequest (validated, tokenised, its strategy
// resolved) and hands it to the Scheduler with a GenerationSink, which the scheduler calls as
// the sequence moves: accepted, each token, finished. The gRPC stream implements the sink;
// tests and benchmarks may implement it too.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/engine/generate.h"
#include "common/engine/sampler.h"
#include "inference_service/strategy_holder.h"

namespace kvshare {

struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;  // non-empty, ids in range
  int max_tokens = 0;           // >= 1
  SamplingParams sampling;      // validated; its seed drives this request's own Sampler
  std::vector<std::string> stop;
  bool ignore_eos = false;  // end-of-generation ids are text (benchmarks)
  int logprobs = 0;         // 0 = none; else the token's log-probability and this many alternatives
  VersionedStrategy strategy;  // kept for the request's whole life
  absl::Time deadline = absl::InfiniteFuture();
};

struct TokenAlternativeInfo {
  int32_t id = 0;
  std::string text;
  double logprob = 0.0;
};

struct SampledToken {
  int32_t id = 0;
  std::string piece;          // its bytes, cut before a stop string
  bool has_logprobs = false;  // the request asked for logprobs
  double logprob = 0.0;
  std::vector<TokenAlternativeInfo> top;
};

struct GenerationTimings {
  double queue_seconds = 0.0;                // accepted -> admitted to the running batch
  double prefill_seconds = 0.0;              // admitted -> first token
  double decode_seconds = 0.0;               // first token -> last
  double time_to_first_token_seconds = 0.0;  // accepted -> first token
};

struct GenerationOutcome {
  FinishReason finish = FinishReason::kLength;
  // OK for length/stop/eos. For kCancelled, why: CANCELLED (the client), DEADLINE_EXCEEDED,
  // UNAVAILABLE (the worker stopped or its drain grace ran out), INTERNAL (an engine failure).
  absl::Status status;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  GenerationTimings timings;
};

// Callbacks from the scheduler. OnAccepted runs on the submitting thread inside
// Scheduler::Submit (before any other callback; it must not call back into the scheduler);
// OnToken and OnFinished run on the scheduler thread. OnFinished is the last call: the
// scheduler never touches the sink afterwards, so the sink may destroy itself from there on.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  virtual void OnAccepted(const GenerationRequest& request) = 0;
  virtual void OnToken(const SampledToken& token) = 0;
  virtual void OnFinished(const GenerationOutcome& outcome) = 0;
  // Polled by the scheduler thread before every step; a true answer stops the sequence there
  // (status CANCELLED) and frees its blocks.
  virtual bool IsCancelled() const = 0;
};

}  // namespace kvshare
