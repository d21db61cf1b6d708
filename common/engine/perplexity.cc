#include "common/engine/perplexity.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/engine/sampler.h"

namespace kvshare {
namespace {

// One window: tokens [start, end) prefilled; targets [first, last] scored (row r predicts
// token start + r + 1).
struct Window {
  int64_t start, end, first, last;
};

// The windows of a pass, in order: each scores the targets the earlier ones did not.
std::vector<Window> PlanWindows(int64_t n, int context, int stride) {
  std::vector<Window> windows;
  int64_t scored_until = 0;  // targets at positions <= scored_until are planned (0 never is one)
  for (int64_t start = 0; scored_until < n - 1; start += stride) {
    Window w;
    w.start = start;
    w.end = std::min(n, start + context);
    w.first = std::max(scored_until + 1, start + 1);
    w.last = std::min(w.end, n - 1);
    windows.push_back(w);
    scored_until = w.last;
  }
  return windows;
}

// `sum` less the log-probabilities of targets [from, to] (none when from > to), from the
// logits of a step whose row 0 is position `row0` (row i predicts token row0 + i + 1): in
// target order, so a window summed in two steps adds exactly as in one.
double AddTargetsNll(double sum, const std::vector<float>& logits, int vocab,
                     absl::Span<const int32_t> tokens, int64_t row0, int64_t from, int64_t to) {
  for (int64_t target = from; target <= to; ++target) {
    const float* row = logits.data() + size_t(target - row0 - 1) * vocab;
    sum -= LogProb(absl::MakeConstSpan(row, vocab), tokens[target]);
  }
  return sum;
}

// The NLL sum of window k's targets, run on `engine` as a fresh sequence; `logits` is the
// lane's scratch. With options.prefixes, a window whose strategy keeps block 0 in f16 is run
// as its prefix and the rest, the prefix copied from what an earlier pass kept when that
// computed it alike, else kept for the passes after.
absl::StatusOr<double> WindowNll(Engine& engine, absl::Span<const int32_t> tokens, const Window& w,
                                 size_t k, const PerplexityOptions& options,
                                 std::vector<float>* logits) {
  const int vocab = engine.config().vocab_size;
  const SharingStrategy& strategy =
      options.strategy != nullptr ? *options.strategy : engine.identity();
  WindowPrefixes* prefixes = options.prefixes;
  const int64_t p = prefixes != nullptr ? prefixes->positions() : 0;
  const bool split =
      p > 0 && w.end - w.start > p && engine.kv_cache().PrefixShareable(strategy, strategy, p).ok();
  auto seq_or = engine.AddSequence(options.strategy);
  if (!seq_or.ok()) return seq_or.status();
  ScopedSequence seq(engine, *seq_or);
  if (!split) {
    absl::Status s = engine.Prefill(seq.id(), tokens.subspan(w.start, w.end - w.start), logits,
                                    /*all_logits=*/true);
    if (!s.ok()) return s;
    return AddTargetsNll(0.0, *logits, vocab, tokens, w.start, w.first, w.last);
  }
  const int64_t cut = w.start + p;  // the rest's first position
  double sum = 0.0;
  const WindowPrefixes::Kept* kept = prefixes->Find(k, &engine);
  if (kept != nullptr &&
      engine.kv_cache()
          .PrefixShareable(kept->strategy != nullptr ? *kept->strategy : engine.identity(),
                           strategy, p)
          .ok()) {
    absl::Status s = engine.kv_cache().CopyPrefix(kept->seq, seq.id(), p);
    if (!s.ok()) return s;
    sum = kept->nll;
  } else {
    absl::Status s = engine.Prefill(seq.id(), tokens.subspan(w.start, p), logits,
                                    /*all_logits=*/true);
    if (!s.ok()) return s;
    sum = AddTargetsNll(0.0, *logits, vocab, tokens, w.start, w.first, std::min(w.last, cut));
    // Kept for later passes when the pool has room for it (else this window runs whole again).
    auto keeper = engine.AddSequence(options.strategy);
    if (keeper.ok()) {
      if (engine.kv_cache().CopyPrefix(seq.id(), *keeper, p).ok()) {
        prefixes->Keep(k, {&engine, *keeper, sum, options.strategy});
      } else {
        engine.RemoveSequence(*keeper);
      }
    }
  }
  absl::Status s =
      engine.Prefill(seq.id(), tokens.subspan(cut, w.end - cut), logits, /*all_logits=*/true);
  if (!s.ok()) return s;
  return AddTargetsNll(sum, *logits, vocab, tokens, cut, std::max(w.first, cut + 1), w.last);
}

}  // namespace

double PerplexityResult::perplexity() const { return std::exp(mean_nll); }

int64_t PerplexityWindows(int64_t tokens, int context, int stride) {
  return int64_t(PlanWindows(tokens, context, stride).size());
}

WindowPrefixes::~WindowPrefixes() { Plan(0); }

void WindowPrefixes::Plan(size_t windows) {
  if (windows == windows_.size()) return;
  for (const Kept& k : windows_) {
    if (k.engine != nullptr) k.engine->RemoveSequence(k.seq);
  }
  windows_.assign(windows, Kept{});
}

int WindowPrefixes::kept() const {
  int n = 0;
  for (const Kept& k : windows_) n += k.engine != nullptr;
  return n;
}

const WindowPrefixes::Kept* WindowPrefixes::Find(size_t w, const Engine* engine) const {
  return w < windows_.size() && windows_[w].engine == engine ? &windows_[w] : nullptr;
}

void WindowPrefixes::Keep(size_t w, Kept kept) {
  // Not planned, or kept on another engine (whose lane may be running now): the new one goes.
  if (w >= windows_.size() ||
      (windows_[w].engine != nullptr && windows_[w].engine != kept.engine)) {
    kept.engine->RemoveSequence(kept.seq);
    return;
  }
  if (windows_[w].engine != nullptr) windows_[w].engine->RemoveSequence(windows_[w].seq);
  windows_[w] = std::move(kept);
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    Engine& engine, absl::Span<const int32_t> tokens, const PerplexityOptions& options,
    const std::function<void(int64_t, int64_t)>& progress) {
  Engine* lanes[] = {&engine};
  return EvaluatePerplexity(lanes, tokens, options, progress);
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    absl::Span<Engine* const> lanes, absl::Span<const int32_t> tokens,
    const PerplexityOptions& options, const std::function<void(int64_t, int64_t)>& progress) {
  if (lanes.empty()) return absl::InvalidArgumentError("perplexity: no engine to run it on");
  const ModelConfig& c = lanes[0]->config();
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
  const int64_t total_targets = int64_t(tokens.size()) - 1;
  const std::vector<Window> windows =
      PlanWindows(int64_t(tokens.size()), options.context, options.stride);
  const size_t n_lanes = std::min(lanes.size(), windows.size());
  if (options.prefixes != nullptr) options.prefixes->Plan(windows.size());
  std::vector<std::vector<float>> logits(n_lanes);
  std::vector<absl::StatusOr<double>> sums(n_lanes);
  PerplexityResult r;
  double nll_sum = 0.0;
  for (size_t round = 0; round < windows.size(); round += n_lanes) {
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_acquire)) {
      return absl::CancelledError(absl::StrFormat("perplexity: cancelled after %d of %d targets",
                                                  r.tokens_scored, total_targets));
    }
    const size_t count = std::min(n_lanes, windows.size() - round);
    auto run = [&](size_t lane) {
      sums[lane] = WindowNll(*lanes[lane], tokens, windows[round + lane], round + lane, options,
                             &logits[lane]);
    };
    std::vector<std::thread> others;
    for (size_t lane = 1; lane < count; ++lane) others.emplace_back(run, lane);
    run(0);
    for (std::thread& t : others) t.join();
    // In window order, as one engine would have gone: the first error, or each window's sum,
    // progress and the stop rule.
    for (size_t lane = 0; lane < count; ++lane) {
      if (!sums[lane].ok()) return sums[lane].status();
      const Window& w = windows[round + lane];
      nll_sum += *sums[lane];
      r.window_targets.push_back(w.last - w.first + 1);
      r.window_nll_sums.push_back(*sums[lane]);
      r.tokens_scored = w.last;
      r.mean_nll = nll_sum / double(w.last);
      if (progress) progress(w.last, total_targets);
      const bool last = round + lane + 1 == windows.size();
      if (!last && options.stop_early && options.stop_early(r)) return r;
    }
  }
  return r;
}

}  // namespace kvshare
