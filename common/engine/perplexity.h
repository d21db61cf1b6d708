// Perplexity of a text on top of Engine: sliding windows, each prefilled with every row's
// logits, scored by the next token's NLL. The CLI's `eval`, the held-out quality meter of the
// searches (search_service/heldout_quality.h), the workers' quality probe and the golden tests
// share it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "common/strategy/sharing_strategy.h"

namespace kvshare {

struct PerplexityResult {
  int64_t tokens_scored = 0;
  double mean_nll = 0.0;  // nats per token
  // Per window, in order: the targets it scored and the sum of their NLL.
  std::vector<int64_t> window_targets;
  std::vector<double> window_nll_sums;
  double perplexity() const;
};

struct PerplexityOptions {
  int context = 512;  // window length in tokens
  int stride = 512;   // window start step; tokens already scored are not scored again
  std::shared_ptr<const SharingStrategy> strategy;
  // When set, read before every window: Cancelled once it is true.
  const std::atomic<bool>* cancel = nullptr;
  // When set, called after every window but the last with the windows so far; returning true
  // ends the pass there (the result then covers fewer targets than the text holds).
  std::function<bool(const PerplexityResult& so_far)> stop_early;
};

// Mean next-token NLL of `tokens` (tokens[0], usually BOS, is context only): sliding windows
// of `context` tokens starting every `stride` tokens, each scoring the targets the previous
// windows did not, so every token after the first is scored once — including each window's
// last row's prediction of the token after the window (with stride = context, the next window
// holds no row before that token). progress(done_targets, total_targets) is called after
// every window.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    Engine& engine, absl::Span<const int32_t> tokens, const PerplexityOptions& options,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

// The same with several engines of one model (lanes), each prefilling its own window at the
// same time: windows k, k + 1, ... k + lanes - 1 run side by side, one per lane, then the
// next round. A window is a fresh sequence whose figure depends only on its tokens, the
// strategy and the engine's backend settings (not on its thread count), so with lanes of the
// same settings the result — window sums, progress calls, where stop_early ends the pass — is
// that of one engine, bit for bit; only the wall time differs. Lanes of one thread each score
// faster than one engine of all the threads: a window's ops share no barriers across lanes
// (SmolLM2 on 2 cores: 1.13x). The engines must be distinct and idle.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    absl::Span<Engine* const> lanes, absl::Span<const int32_t> tokens,
    const PerplexityOptions& options,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace kvshare
