#include "search_service/heldout_quality.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/strategy/strategy_binding.h"
#include "common/util/sha256.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/heldout_baseline_cache.h"

namespace kvshare {
namespace {

std::string HashSlice(int context, const std::vector<int32_t>& ids) {
  Sha256 h;
  h.Update(absl::StrFormat("kvshare-heldout-v1 %d\n", context));
  std::string bytes(ids.size() * 4, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(ids[i]);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<char>((u >> (8 * b)) & 0xff);
  }
  h.Update(bytes);
  return h.HexDigest();
}

// Whether every matmul of `model` computes a row the same whatever the number of rows in its
// step: with integer activations on quantized weights (exact integer dots, each token's sum in
// the same order); the fp32 tile kernels and OpenBLAS (f32/f16 weights) tile by the rows. Only
// then does a window run as its first block and the rest score what it scores in one step.
bool RowsIndependentOfStep(const Model& model, cpu::Activations activations) {
  if (activations == cpu::Activations::kF32) return false;
  auto quantized = [](const Tensor& t) {
    return t.type != DType::kF32 && t.type != DType::kF16 && t.type != DType::kBF16;
  };
  const ModelWeights& w = model.weights();
  bool all = quantized(w.output);
  for (const LayerWeights& l : w.layers) {
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      all = all && quantized(*t);
    }
  }
  return all;
}

}  // namespace

int LastCalibrationLine(const CalibrationSet& calibration) {
  return calibration.source_lines.empty() ? 0 : calibration.source_lines.back();
}

absl::StatusOr<HeldoutSlice> BuildHeldoutSlice(std::string_view text, const Tokenizer& tokenizer,
                                               int after_line, const HeldoutOptions& options,
                                               const std::string& source, bool cli_flags) {
  const char* f_tokens = cli_flags ? "--heldout-tokens" : "heldout_tokens";
  const char* f_context = cli_flags ? "--heldout-context" : "heldout_context";
  if (options.tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d must be >= 1", f_tokens, options.tokens));
  }
  if (options.context < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d must be >= 2", f_context, options.context));
  }
  size_t offset = 0;
  for (int line = 0; line < after_line; ++line) {
    offset = text.find('\n', offset);
    if (offset == std::string_view::npos) {
      return absl::OutOfRangeError(
          absl::StrFormat("%s: no held-out text: it ends before line %d", source, after_line + 1));
    }
    ++offset;
  }
  const std::string_view rest = text.substr(offset);
  // Tokenise a prefix cut at a line end (WikiText-2 is ~1.3 MB; ~16 bytes per needed token is
  // plenty), growing it when it falls short. Only tokens well before the cut are kept, so the
  // cut does not change them.
  const int64_t margin = 64;
  std::vector<int32_t> ids;
  for (size_t bytes = size_t(options.tokens) * 16;; bytes *= 2) {
    std::string_view prefix = rest.substr(0, bytes);
    if (prefix.size() < rest.size()) {
      const size_t cut = prefix.rfind('\n');
      if (cut != std::string_view::npos) prefix = prefix.substr(0, cut + 1);
    }
    ids = tokenizer.Encode(prefix, /*add_bos=*/false);
    if (prefix.size() == rest.size() || int64_t(ids.size()) >= options.tokens + margin) break;
  }
  if (int64_t(ids.size()) < options.tokens) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%s from line %d has %d tokens; %s %d asked for (use fewer, or a longer text)", source,
        after_line + 1, ids.size(), f_tokens, options.tokens));
  }
  ids.resize(options.tokens);
  // BOS first (the document start); it is context, never a target.
  if (tokenizer.bos_id() >= 0) ids.insert(ids.begin(), tokenizer.bos_id());
  HeldoutSlice slice;
  slice.ids = std::move(ids);
  slice.first_line = after_line + 1;
  slice.context = options.context;
  slice.hash = HashSlice(options.context, slice.ids);
  return slice;
}

absl::StatusOr<HeldoutSlice> CalibrationHeldoutSlice(std::string_view calibration_text,
                                                     const CalibrationSet& calibration,
                                                     const Tokenizer& tokenizer,
                                                     const ModelConfig& config,
                                                     const HeldoutOptions& options,
                                                     const std::string& source, bool cli_flags) {
  if (options.context > config.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d exceeds the context of '%s' (%d)",
                        cli_flags ? "--heldout-context" : "heldout_context", options.context,
                        config.name, config.max_seq_len));
  }
  return BuildHeldoutSlice(calibration_text, tokenizer, LastCalibrationLine(calibration), options,
                           source, cli_flags);
}

absl::StatusOr<StrategyQuality> MeasureHeldoutQuality(
    const Model& model, HeldoutSlice slice, int threads,
    std::shared_ptr<const SharingStrategy> strategy, double calibration_score,
    const std::atomic<bool>* cancel, HeldoutBaselineCache* baselines) {
  auto meter =
      QualityMeter::Create(model, std::move(slice), threads, cancel, EngineOptions{}.block_tokens,
                           cpu::Activations::kF32, baselines);
  if (!meter.ok()) return meter.status();
  return (*meter)->Measure(std::move(strategy), calibration_score);
}

double StrategyQuality::heldout_ppl() const { return std::exp(heldout_nll); }
double StrategyQuality::baseline_ppl() const { return std::exp(baseline_nll); }

void RecordQuality(const StrategyQuality& q, StrategyProvenance* p) {
  p->heldout_ppl = q.heldout_ppl();
  p->baseline_ppl = q.baseline_ppl();
  p->heldout_tokens = q.heldout_tokens;
  p->heldout_context = q.context;
  p->heldout_hash = q.heldout_hash;
  p->calibration_score = q.calibration_score;
}

absl::StatusOr<std::unique_ptr<QualityMeter>> QualityMeter::Create(
    const Model& model, HeldoutSlice slice, int threads, const std::atomic<bool>* cancel,
    int block_tokens, cpu::Activations activations, HeldoutBaselineCache* baselines) {
  const ModelConfig& c = model.config();
  if (slice.context < 2 || slice.context > c.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--heldout-context %d must be in [2, %d] (the context of '%s')",
                        slice.context, c.max_seq_len, c.name));
  }
  if (slice.ids.size() < 2) {
    return absl::InvalidArgumentError("held-out slice: need at least 2 tokens");
  }
  std::unique_ptr<QualityMeter> meter(new QualityMeter(model, std::move(slice)));
  meter->cancel_ = cancel;
  EngineOptions eo;
  eo.kv_type = KvType::kF32;  // the pinned held-out figures are of the exact fp32 cache
  eo.max_step_rows = meter->slice_.context;
  eo.block_tokens = block_tokens;
  const int64_t windows = PerplexityWindows(int64_t(meter->slice_.ids.size()),
                                            meter->slice_.context, meter->slice_.context);
  const int total_threads =
      threads > 0 ? threads : std::max(1, int(std::thread::hardware_concurrency()));
  const int lanes = int(std::min<int64_t>({total_threads, kMaxLanes, windows}));
  // One window at a time: room for a context of unshared KV plus a block of slack, and for the
  // kept first blocks of the lane's windows (at most f16's bytes each).
  const int64_t kept_bytes =
      (windows + lanes - 1) / lanes * c.n_layers *
      KvGeometry{block_tokens, c.n_kv_heads, c.head_dim, KvType::kF16}.block_bytes();
  eo.kv_pool_bytes =
      int64_t(meter->slice_.context + std::max(64, block_tokens)) * c.KvBytesPerToken() +
      kept_bytes;
  // Lanes: one per thread up to kMaxLanes (never more than the slice has windows), the
  // threads dealt out among them.
  for (int lane = 0; lane < lanes; ++lane) {
    CpuBackendOptions cpu;
    cpu.threads = total_threads / lanes + (lane < total_threads % lanes ? 1 : 0);
    cpu.matmul.activations = activations;
    auto engine = Engine::Create(model, MakeCpuBackend(cpu), eo);
    if (!engine.ok()) return engine.status();
    meter->lanes_.push_back(engine->get());
    meter->engines_.push_back(std::move(*engine));
  }
  if (block_tokens < meter->slice_.context && RowsIndependentOfStep(model, activations)) {
    meter->prefixes_ = std::make_unique<WindowPrefixes>(block_tokens);
  }
  const std::string key =
      baselines != nullptr
          ? HeldoutBaselineCache::Key(model, meter->slice_, block_tokens, activations)
          : std::string();
  if (baselines != nullptr) {
    if (std::optional<PerplexityResult> kept = baselines->Find(key)) {
      meter->baseline_ = std::move(*kept);
      meter->baseline_cached_ = true;
      return meter;
    }
  }
  auto base = meter->Perplexity(nullptr);
  if (!base.ok()) return base.status();
  meter->baseline_ = *base;
  if (baselines != nullptr) baselines->Insert(key, meter->baseline_);
  return meter;
}

bool RejectEarly(const PerplexityResult& so_far, const PerplexityResult& baseline,
                 const EarlyReject& rule) {
  const size_t n = so_far.window_nll_sums.size();
  if (n > baseline.window_nll_sums.size()) return false;
  std::vector<double> increases(n);
  for (size_t w = 0; w < n; ++w) {
    increases[w] = (so_far.window_nll_sums[w] - baseline.window_nll_sums[w]) /
                   double(so_far.window_targets[w]);
  }
  return OverBudgetBeyondDoubt(increases, baseline.window_nll_sums.size(), rule);
}

double NllIncreaseOver(const PerplexityResult& r, const PerplexityResult& baseline) {
  const size_t n = std::min(r.window_nll_sums.size(), baseline.window_nll_sums.size());
  double plan = 0, base = 0;
  int64_t targets = 0;
  for (size_t w = 0; w < n; ++w) {
    plan += r.window_nll_sums[w];
    base += baseline.window_nll_sums[w];
    targets += r.window_targets[w];
  }
  return targets == 0 ? 0.0 : (plan - base) / double(targets);
}

absl::StatusOr<PerplexityResult> QualityMeter::Perplexity(
    std::shared_ptr<const SharingStrategy> strategy, const EarlyReject* reject) {
  if (strategy != nullptr) {
    absl::Status s = ValidateStrategyForModel(*strategy, model_);
    if (!s.ok()) return s;
  }
  PerplexityOptions po;
  po.context = slice_.context;
  po.stride = slice_.context;
  po.strategy = std::move(strategy);
  po.cancel = cancel_;
  po.prefixes = prefixes_.get();
  if (reject != nullptr) {
    po.stop_early = [this, reject](const PerplexityResult& so_far) {
      return RejectEarly(so_far, baseline_, *reject);
    };
  }
  return EvaluatePerplexity(lanes_, slice_.ids, po);
}

absl::StatusOr<StrategyQuality> QualityMeter::Measure(
    std::shared_ptr<const SharingStrategy> strategy, double calibration_score) {
  auto ppl = Perplexity(std::move(strategy));
  if (!ppl.ok()) return ppl.status();
  StrategyQuality q;
  q.heldout_nll = ppl->mean_nll;
  q.baseline_nll = baseline_.mean_nll;
  q.heldout_tokens = ppl->tokens_scored;
  q.context = slice_.context;
  q.heldout_hash = slice_.hash;
  q.calibration_score = calibration_score;
  return q;
}

}  // namespace kvshare
