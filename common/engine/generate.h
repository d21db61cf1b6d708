// Text generation and perplexity on top of Engine: the loops the CLI, the worker and the
// benchmarks share.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/engine/sampler.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

enum class FinishReason { kLength, kStop, kEos, kCancelled };
const char* FinishReasonName(FinishReason r);

struct GenerateOptions {
  int max_tokens = 256;  // tokens generated after the prompt
  SamplingParams sampling;
  std::vector<std::string> stop;  // generation ends when the text contains one (not included)
  std::shared_ptr<const SharingStrategy> strategy;  // null = identity
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (without the prompt)
  std::string text;             // their bytes, cut before a stop string
  FinishReason finish = FinishReason::kLength;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};

// Called with each generated token and its bytes; return false to cancel.
using TokenCallback = std::function<bool(int32_t id, const std::string& piece)>;

// Prefills `prompt` in a fresh sequence, then samples up to max_tokens more. The sequence is
// removed (its KV blocks freed) before returning.
absl::StatusOr<GenerateResult> Generate(Engine& engine, const Tokenizer& tokenizer,
                                        absl::Span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                        const TokenCallback& on_token = nullptr);

struct PerplexityOptions {
  int context = 512;  // window length in tokens
  int stride = 512;   // window start step; tokens already scored are not scored again
  std::shared_ptr<const SharingStrategy> strategy;
};

struct PerplexityResult {
  int64_t tokens_scored = 0;
  double mean_nll = 0.0;  // nats per token
  double perplexity() const;
};

// Mean next-token NLL of `tokens` (tokens[0], usually BOS, is context only): sliding windows
// of `context` tokens starting every `stride` tokens, each scoring the targets the previous
// windows did not. progress(done_targets, total_targets) is called after every window.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    Engine& engine, absl::Span<const int32_t> tokens, const PerplexityOptions& options,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace kvshare
