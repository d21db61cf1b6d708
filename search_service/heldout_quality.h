// The measured quality every search result carries (issue 12): perplexity with and without
// the strategy on a fixed held-out slice of text disjoint from the calibration lines, beside
// the calibration cosine score.
//
// Held-out slice: the text from the line after the last calibration line (when the held-out
// text is the calibration text; from its first line otherwise), tokenised without BOS, its
// first `tokens` tokens, BOS put first when the tokenizer has one (context, never a target).
// Scored as EvaluatePerplexity does: windows of `context` tokens, stride = context (each target
// scored once). WikiText-2 test, 16384 tokens, 512-token windows by default.
//
// QualityMeter owns an engine; not thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/tokenizer/tokenizer.h"
#include "kernels/cpu/matmul.h"
#include "search_service/calibration.h"
#include "search_service/early_reject.h"

namespace kvshare {

class HeldoutBaselineCache;  // heldout_baseline_cache.h

struct HeldoutOptions {
  int64_t tokens = 16384;  // targets scored (the slice is tokens + 1 with BOS)
  int context = 512;       // window length = stride
};

struct HeldoutSlice {
  std::vector<int32_t> ids;  // BOS (when the tokenizer has one), then `tokens` text tokens
  int first_line = 1;        // 1-based line of the text the slice starts at
  int context = 512;
  // Hex SHA-256 of "kvshare-heldout-v1 <context>\n" + the ids as little-endian int32.
  std::string hash;
  int64_t targets() const { return int64_t(ids.size()) - 1; }
};

// The slice of `text` starting after line `after_line` (0: from the start). `source` names the
// text in errors. InvalidArgument for tokens < 1 or context < 2, and OutOfRange when the text
// after that line has fewer than `tokens` tokens (saying how many it has) — never a shorter
// slice. `cli_flags`: errors name the options as the CLI flags ("--heldout-tokens") or as the
// proto fields ("heldout_tokens").
absl::StatusOr<HeldoutSlice> BuildHeldoutSlice(std::string_view text, const Tokenizer& tokenizer,
                                               int after_line, const HeldoutOptions& options,
                                               const std::string& source, bool cli_flags = true);
// The last line a calibration set took (0 when empty): a held-out slice of the same text
// starts after it.
int LastCalibrationLine(const CalibrationSet& calibration);

// The held-out slice of a search's own calibration text (what `kvshare search` and the search
// service measure by default): BuildHeldoutSlice after LastCalibrationLine(calibration), once
// options.context is checked against the model's context (InvalidArgument naming the field,
// the value and the limit).
absl::StatusOr<HeldoutSlice> CalibrationHeldoutSlice(
    std::string_view calibration_text, const CalibrationSet& calibration,
    const Tokenizer& tokenizer, const ModelConfig& config, const HeldoutOptions& options,
    const std::string& source, bool cli_flags = true);

struct StrategyQuality {
  double heldout_nll = 0, baseline_nll = 0;  // nats/token
  int64_t heldout_tokens = 0;
  int context = 0;
  std::string heldout_hash;
  double calibration_score = 0;  // mean cosine to the unshared model on the calibration set
  double heldout_ppl() const;
  double baseline_ppl() const;
  double nll_increase() const { return heldout_nll - baseline_nll; }
};

// Writes the measured quality into a strategy's provenance.
void RecordQuality(const StrategyQuality& quality, StrategyProvenance* provenance);

// The quality of `strategy` on `slice` (a QualityMeter for one strategy: the unshared model's
// perplexity, then the strategy's), with the given calibration score. `threads`: the CPU
// backend's. Cancelled when *cancel turns true (read before every window of either pass).
// `baselines` (optional): where the unshared pass is looked up and kept (QualityMeter::Create).
absl::StatusOr<StrategyQuality> MeasureHeldoutQuality(
    const Model& model, HeldoutSlice slice, int threads,
    std::shared_ptr<const SharingStrategy> strategy, double calibration_score,
    const std::atomic<bool>* cancel = nullptr, HeldoutBaselineCache* baselines = nullptr);

// Perplexity of strategies on one held-out slice; the unshared model's is computed once, at
// Create.
// Whether `so_far` (a prefix of the windows of `baseline`'s slice) puts the whole slice over
// rule.above_nats beyond doubt (early_reject.h), the windows' mean NLL increases being the
// units and baseline's windows all of them.
bool RejectEarly(const PerplexityResult& so_far, const PerplexityResult& baseline,
                 const EarlyReject& rule);

// The NLL increase (nats/token) of `r` over `baseline` on the windows `r` covers: all of the
// slice's, or the prefix an early stop left.
double NllIncreaseOver(const PerplexityResult& r, const PerplexityResult& baseline);

class QualityMeter {
 public:
  // `threads`: the CPU threads (0 = all cores), split over up to kMaxLanes engines that score
  // windows side by side (perplexity.h's lanes: the figures are one engine's, bit for bit; each
  // lane holds its own repacked weights and a window's logits, ~200 MB on SmolLM2). Each
  // window's first KV block is kept after the first check that runs it with block 0 in f16
  // (WindowPrefixes: the int4 family, f16; ~3 MB per window on SmolLM2) and copied by the later
  // ones, which run the rest of the window only — the same figures bit for bit, which holds
  // where a row's matmuls do not depend on the rows beside it: integer activations (int8x2,
  // int8) on quantized weights. Other meters run every window whole.
  // InvalidArgument when the slice's context
  // exceeds the model's. `cancel`: when set, every perplexity pass (the baseline's at Create
  // included) ends Cancelled before its next window once it is true; it must outlive the meter.
  // `block_tokens`: the paged pool's block size (what an int4 layer quantises over).
  // `activations`: how quantized matmuls take activations (kernels/cpu/matmul.h); the baseline
  // and every plan are measured the same way.
  // `baselines` (optional, must outlive Create only): the unshared pass is taken from it when it
  // holds this model's, slice's, block size's and activations' (baseline_cached() then), else
  // run and kept there.
  static absl::StatusOr<std::unique_ptr<QualityMeter>> Create(
      const Model& model, HeldoutSlice slice, int threads,
      const std::atomic<bool>* cancel = nullptr, int block_tokens = EngineOptions{}.block_tokens,
      cpu::Activations activations = cpu::Activations::kF32,
      HeldoutBaselineCache* baselines = nullptr);

  static constexpr int kMaxLanes = 4;

  const HeldoutSlice& slice() const { return slice_; }
  int lanes() const { return int(engines_.size()); }
  const PerplexityResult& baseline() const { return baseline_; }
  // Whether baseline() came from Create's cache rather than a pass of this meter.
  bool baseline_cached() const { return baseline_cached_; }
  // FailedPrecondition for a strategy of another model (fingerprint, layer count). With
  // `reject`, the pass may stop early (EarlyReject): tokens_scored < slice().targets() then.
  absl::StatusOr<PerplexityResult> Perplexity(std::shared_ptr<const SharingStrategy> strategy,
                                              const EarlyReject* reject = nullptr);
  // Drops the kept window prefixes (the checks after start as a fresh meter's would: what a
  // benchmark timing one search after another on one meter needs).
  void DropKeptPrefixes() {
    if (prefixes_ != nullptr) prefixes_->Plan(0);
  }
  int kept_prefixes() const { return prefixes_ != nullptr ? prefixes_->kept() : 0; }
  // Perplexity of `strategy` beside the baseline, with the given calibration score.
  absl::StatusOr<StrategyQuality> Measure(std::shared_ptr<const SharingStrategy> strategy,
                                          double calibration_score);

 private:
  QualityMeter(const Model& model, HeldoutSlice slice) : model_(model), slice_(std::move(slice)) {}
  const Model& model_;
  HeldoutSlice slice_;
  const std::atomic<bool>* cancel_ = nullptr;
  std::vector<std::unique_ptr<Engine>> engines_;
  std::vector<Engine*> lanes_;  // engines_, as EvaluatePerplexity takes them
  // The windows' first KV block, kept across checks (declared after engines_: it goes first).
  std::unique_ptr<WindowPrefixes> prefixes_;
  PerplexityResult baseline_;
  bool baseline_cached_ = false;
};

}  // namespace kvshare
