#include "common/engine/generate.h"

#include <chrono>

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

CompletionTracker::CompletionTracker(const Tokenizer& tokenizer, int32_t last_prompt_token,
                                     int max_tokens, std::vector<std::string> stop, bool ignore_eos)
    : tokenizer_(tokenizer),
      prev_(last_prompt_token),
      max_tokens_(max_tokens),
      stop_(std::move(stop)),
      ignore_eos_(ignore_eos) {}

CompletionTracker::Step CompletionTracker::Accept(int32_t id) {
  Step step;
  if (!ignore_eos_ && tokenizer_.IsEndOfGeneration(id)) {
    step.finished = finished_ = true;
    step.finish = FinishReason::kEos;
    return step;
  }
  step.emitted = true;
  tokens_.push_back(id);
  step.piece = tokenizer_.DecodeToken(prev_, id);
  prev_ = id;
  const size_t before = text_.size();
  text_ += step.piece;
  for (const std::string& stop : stop_) {
    if (stop.empty()) continue;
    // Only a match that ends in the new piece is new.
    const size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
    const size_t at = text_.find(stop, from);
    if (at != std::string::npos) {
      step.piece = at > before ? text_.substr(before, at - before) : "";
      text_.resize(at);
      step.finished = finished_ = true;
      step.finish = FinishReason::kStop;
      return step;
    }
  }
  if (int(tokens_.size()) >= max_tokens_) {
    step.finished = finished_ = true;
    step.finish = FinishReason::kLength;
  }
  return step;
}

absl::StatusOr<GenerateResult> Generate(Engine& engine, const Tokenizer& tokenizer,
                                        absl::Span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                        const TokenCallback& on_token) {
  const ModelConfig& c = engine.config();
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: no tokens");
  if (options.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_tokens %d must be >= 1", options.max_tokens));
  }
  if (int64_t(prompt.size()) + options.max_tokens > c.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt (%d tokens) + max_tokens (%d) = %d exceeds the model's context of %d tokens",
        prompt.size(), options.max_tokens, prompt.size() + options.max_tokens, c.max_seq_len));
  }
  absl::Status s = ValidateSamplingParams(options.sampling, c.vocab_size);
  if (!s.ok()) return s;
  auto seq_or = engine.AddSequence(options.strategy);
  if (!seq_or.ok()) return seq_or.status();
  ScopedSequence seq(engine, *seq_or);

  GenerateResult result;
  Sampler sampler(options.sampling);
  std::vector<float> logits;
  auto t0 = std::chrono::steady_clock::now();
  s = engine.Prefill(seq.id(), prompt, &logits);
  if (!s.ok()) return s;
  auto t1 = std::chrono::steady_clock::now();
  result.prefill_seconds = Seconds(t0, t1);

  CompletionTracker tracker(tokenizer, prompt.back(), options.max_tokens, options.stop);
  while (true) {
    const int32_t next = sampler.Sample(logits);
    const CompletionTracker::Step step = tracker.Accept(next);
    if (step.emitted && on_token && !on_token(next, step.piece)) {
      result.finish = FinishReason::kCancelled;
      break;
    }
    if (step.finished) {
      result.finish = step.finish;
      break;
    }
    StepInput in{seq.id(), absl::MakeConstSpan(&next, 1), false};
    s = engine.Step({in}, &logits);
    if (!s.ok()) return s;
  }
  result.tokens = tracker.tokens();
  result.text = tracker.text();
  result.decode_seconds = Seconds(t1, std::chrono::steady_clock::now());
  return result;
}

}  // namespace kvshare
