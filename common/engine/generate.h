// Text generation on top of Engine: the loop the CLI, the worker and the benchmarks share
// (perplexity.h scores text).
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

// The text side of one completion, token by token: turns sampled ids into bytes, cuts the text
// before a stop string, and says when the completion is over (end-of-generation id, stop
// string, max_tokens). Generate() and the worker's scheduler share it so a batched sequence
// ends exactly where a solo one does. Not thread-safe; one per sequence.
class CompletionTracker {
 public:
  // `last_prompt_token` is the token before the first generated one (tokenizers decode a
  // piece relative to its predecessor).
  // `ignore_eos` (benchmarks: a fixed amount of work) treats end-of-generation ids as text.
  CompletionTracker(const Tokenizer& tokenizer, int32_t last_prompt_token, int max_tokens,
                    std::vector<std::string> stop, bool ignore_eos = false);

  struct Step {
    bool emitted = false;  // the id is part of the completion (false for an end-of-generation id)
    std::string piece;     // its new bytes, cut before a stop string
    bool finished = false;
    FinishReason finish = FinishReason::kLength;  // when finished
  };
  // Accepts the next sampled id. Must not be called once finished.
  Step Accept(int32_t id);

  bool finished() const { return finished_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // generated ids, in order
  const std::string& text() const { return text_; }

 private:
  const Tokenizer& tokenizer_;
  int32_t prev_;
  int max_tokens_;
  std::vector<std::string> stop_;
  bool ignore_eos_;
  std::vector<int32_t> tokens_;
  std::string text_;
  bool finished_ = false;
};

// Called with each generated token and its bytes; return false to cancel.
using TokenCallback = std::function<bool(int32_t id, const std::string& piece)>;

// Prefills `prompt` in a fresh sequence, then samples up to max_tokens more. The sequence is
// removed (its KV blocks freed) before returning.
absl::StatusOr<GenerateResult> Generate(Engine& engine, const Tokenizer& tokenizer,
                                        absl::Span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                        const TokenCallback& on_token = nullptr);

}  // namespace kvshare
