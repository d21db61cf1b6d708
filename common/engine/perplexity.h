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

// Window prefixes kept between passes over the same tokens (a plan search's held-out checks):
// each window's first `positions` tokens (at most a KV block) are run once and kept — their K/V
// in a sequence of the lane's engine, the NLL of the targets they predict — and a later pass
// whose strategy computes them alike (KvCache::PrefixShareable: block 0 in f16 in every owning
// layer, the same sources) copies them (KvCache::CopyPrefix) and runs the rest of the window
// only. A window run as prefix then rest scores exactly what one step scores — rows meet only
// through K/V, and attention chunks by absolute position — provided the backend's matmuls
// compute a row the same whatever rows share its step, which the caller must know (on the CPU:
// integer activations on quantized weights; fp32 tiles and OpenBLAS tile by the rows; see
// QualityMeter). Then the sums are unchanged bit for bit, and a pass of int4, int4a or k4v3 at
// 64-token blocks skips 1/8 of each 512-token window. Bound to one set of lanes and one token
// sequence with one window plan (Plan(0) drops everything kept); it must not outlive the
// engines, from which its destructor removes the kept sequences.
class WindowPrefixes {
 public:
  struct Kept {
    Engine* engine = nullptr;
    SeqId seq = -1;    // a sequence of `engine` holding the prefix
    double nll = 0.0;  // of the window's targets the prefix rows predict
    std::shared_ptr<const SharingStrategy> strategy;  // what computed it (null: identity)
  };

  explicit WindowPrefixes(int positions) : positions_(positions) {}
  ~WindowPrefixes();
  WindowPrefixes(const WindowPrefixes&) = delete;
  WindowPrefixes& operator=(const WindowPrefixes&) = delete;

  int positions() const { return positions_; }
  // Windows whose prefix is kept.
  int kept() const;
  // (For EvaluatePerplexity.) Sizes it for a pass of `windows` windows before any runs (a
  // different count drops what was kept); then, window by window from the lanes' threads (each
  // window's entry touched by one), window w's kept prefix when it is on `engine` (else null),
  // and keeping one on its engine (replacing what that engine kept for w; dropped when another
  // engine holds w's).
  void Plan(size_t windows);
  const Kept* Find(size_t w, const Engine* engine) const;
  void Keep(size_t w, Kept kept);

 private:
  const int positions_;
  std::vector<Kept> windows_;  // by window index; engine null where none is kept
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
  // When set, windows' prefixes are kept and reused across passes (WindowPrefixes).
  WindowPrefixes* prefixes = nullptr;
};

// How many windows EvaluatePerplexity runs over `tokens` tokens (>= 2) with this context and
// stride (what a caller sizes per-window state by: lanes, kept prefixes).
int64_t PerplexityWindows(int64_t tokens, int context, int stride);

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
