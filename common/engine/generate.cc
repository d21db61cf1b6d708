#include "common/engine/generate.h"

#include <chrono>
#include <cmath>

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Removes the sequence on every exit path.
class ScopedSequence {
 public:
  ScopedSequence(Engine& engine, SeqId seq) : engine_(engine), seq_(seq) {}
  ~ScopedSequence() { engine_.RemoveSequence(seq_); }
  SeqId id() const { return seq_; }

 private:
  Engine& engine_;
  SeqId seq_;
};

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

double PerplexityResult::perplexity() const { return std::exp(mean_nll); }

absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    Engine& engine, absl::Span<const int32_t> tokens, const PerplexityOptions& options,
    const std::function<void(int64_t, int64_t)>& progress) {
  const ModelConfig& c = engine.config();
  if (tokens.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("perplexity: need at least 2 tokens, got %d", tokens.size()));
  }
  if (options.context < 2 || options.context > c.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "context %d must be in [2, %d] (the model's context)", options.context, c.max_seq_len));
  }
  if (options.stride < 1 || options.stride > options.context) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stride %d must be in [1, context = %d]", options.stride, options.context));
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t total_targets = n - 1;
  PerplexityResult r;
  double nll_sum = 0.0;
  int64_t scored_until =
      0;  // targets at positions <= scored_until are done (position 0 is never a target)
  std::vector<float> logits;
  for (int64_t start = 0; scored_until < n - 1; start += options.stride) {
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_acquire)) {
      return absl::CancelledError(absl::StrFormat("perplexity: cancelled after %d of %d targets",
                                                  scored_until, total_targets));
    }
    const int64_t end = std::min(n, start + options.context);
    auto seq_or = engine.AddSequence(options.strategy);
    if (!seq_or.ok()) return seq_or.status();
    ScopedSequence seq(engine, *seq_or);
    absl::Status s = engine.Prefill(seq.id(), tokens.subspan(start, end - start), &logits,
                                    /*all_logits=*/true);
    if (!s.ok()) return s;
    // Row r predicts token start + r + 1: the last row the token after the window, which is
    // the next window's first (with stride = context it is no target of that window, which
    // has no row before it).
    const int64_t first = std::max(scored_until + 1, start + 1);
    const int64_t last = std::min(end, n - 1);
    double window_sum = 0.0;
    for (int64_t target = first; target <= last; ++target) {
      const float* row = logits.data() + size_t(target - start - 1) * c.vocab_size;
      window_sum -= LogProb(absl::MakeConstSpan(row, c.vocab_size), tokens[target]);
    }
    nll_sum += window_sum;
    r.window_targets.push_back(last - first + 1);
    r.window_nll_sums.push_back(window_sum);
    scored_until = last;
    r.tokens_scored = scored_until;
    r.mean_nll = nll_sum / double(scored_until);
    if (progress) progress(scored_until, total_targets);
    if (scored_until == n - 1 || (options.stop_early && options.stop_early(r))) break;
  }
  return r;
}

}  // namespace kvshare
