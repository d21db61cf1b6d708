#include "search_service/search_request.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/limits.h"
#include "common/util/file.h"

namespace kvshare {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// The field as the caller spells it: the CLI flag or the proto field.
std::string F(const SearchRequest& r, const char* flag, const char* field) {
  return r.field_style == FieldStyle::kCliFlag ? flag : field;
}

// The KV plan options a request with max_ppl_increase asks for.
KvPlanOptions PlanOptionsOf(const SearchRequest& r) {
  KvPlanOptions plan;
  plan.max_ppl_increase = r.max_ppl_increase.value_or(plan.max_ppl_increase);
  plan.share_best_of = EffectiveBestOf(r);
  plan.block_tokens = r.kv_block_tokens.value_or(EngineOptions{}.block_tokens);
  plan.activations = EffectiveActivations(r);
  return plan;
}

}  // namespace

RuleDefaults RuleDefaultsFor(const std::string& method) {
  if (method == SearchMethodName(SearchMethod::kKvSharer)) {
    return {"dissimilar", 1, false, cpu::Activations::kF32};
  }
  return {"similar", 8, true, cpu::Activations::kInt8};
}

cpu::Activations EffectiveActivations(const SearchRequest& r) {
  if (r.activations.has_value()) return *r.activations;
  if (r.max_ppl_increase.has_value()) return KvPlanOptions{}.activations;
  if (r.drop_attention.value_or(false)) return cpu::Activations::kF32;
  return RuleDefaultsFor(r.method).activations;
}

std::string EffectiveOrder(const SearchRequest& r) {
  return r.order.value_or(RuleDefaultsFor(r.method).order);
}

int EffectiveBestOf(const SearchRequest& r) {
  if (r.best_of.has_value()) return *r.best_of;
  return r.max_ppl_increase.has_value() ? KvPlanOptions{}.share_best_of
                                        : RuleDefaultsFor(r.method).best_of;
}

bool EffectiveLazy(const SearchRequest& r) {
  return r.lazy.value_or(RuleDefaultsFor(r.method).lazy);
}

absl::StatusOr<std::string> CheckSearchRequest(const SearchRequest& r) {
  const std::string order = EffectiveOrder(r);
  if (!ParsePairOrder(order).ok()) {
    return Invalid(absl::StrFormat("%s '%s' is not one of dissimilar, similar, random",
                                   F(r, "--order", "order"), order));
  }
  auto rule = CheckRuleFields(r.method, EffectiveBestOf(r), r.max_nll_increase,
                              r.field_style == FieldStyle::kCliFlag);
  if (!rule.ok()) return rule.status();
  if (r.kv_block_tokens.has_value() && !r.max_ppl_increase.has_value()) {
    return Invalid(absl::StrFormat("%s: only with %s", F(r, "--block-tokens", "kv_block_tokens"),
                                   F(r, "--max-ppl-increase", "max_ppl_increase")));
  }
  if (r.max_ppl_increase.has_value()) {
    absl::Status s = ValidateKvPlanOptions(PlanOptionsOf(r), r.field_style == FieldStyle::kCliFlag);
    if (!s.ok()) return s;
  }
  const bool drop = r.drop_attention.value_or(false);
  const bool exact_only = !r.max_ppl_increase.has_value() &&
                          (drop || r.method == SearchMethodName(SearchMethod::kKvSharer));
  if (exact_only && EffectiveActivations(r) != cpu::Activations::kF32) {
    return Invalid(absl::StrFormat("%s %s: %s measures with exact (f32) activations",
                                   F(r, "--activations", "activations"),
                                   cpu::ActivationsName(EffectiveActivations(r)),
                                   drop ? F(r, "--drop-attention", "drop_attention")
                                        : "the paper's search (method kvsharer)"));
  }
  if (r.drop_substitutes.has_value() && !drop) {
    return Invalid(absl::StrFormat("%s: only with %s", F(r, "--no-substitutes", "drop_substitutes"),
                                   F(r, "--drop-attention", "drop_attention")));
  }
  if (drop && r.max_ppl_increase.has_value()) {
    return Invalid(absl::StrFormat("%s: not with %s (plans carry no drops yet)",
                                   F(r, "--drop-attention", "drop_attention"),
                                   F(r, "--max-ppl-increase", "max_ppl_increase")));
  }
  // Checked before anything is sized by them (the calibration set reserves samples x tokens).
  if (r.calibration.samples < 1) {
    return Invalid(
        absl::StrFormat("%s %d must be >= 1", F(r, "--samples", "samples"), r.calibration.samples));
  }
  if (r.calibration.samples > kMaxCalibrationSamples) {
    return Invalid(absl::StrFormat("%s %d is above the limit, %d", F(r, "--samples", "samples"),
                                   r.calibration.samples, kMaxCalibrationSamples));
  }
  if (r.calibration.tokens < 1) {
    return Invalid(
        absl::StrFormat("%s %d must be >= 1", F(r, "--tokens", "tokens"), r.calibration.tokens));
  }
  if (r.calibration.tokens > kMaxCalibrationTokens) {
    return Invalid(absl::StrFormat("%s %d is above the limit, %d", F(r, "--tokens", "tokens"),
                                   r.calibration.tokens, kMaxCalibrationTokens));
  }
  if (!(r.threshold > -1.0 && r.threshold <= 1.0)) {
    return Invalid(
        absl::StrFormat("%s %g must be in (-1, 1] (a cosine similarity; accepted when above it)",
                        F(r, "--threshold", "threshold"), r.threshold));
  }
  if (r.target_layers.has_value() && r.target_ratio.has_value()) {
    return Invalid(absl::StrFormat("%s %d and %s %g: give one",
                                   F(r, "--target-layers", "target_layers"), *r.target_layers,
                                   F(r, "--target-ratio", "target_ratio"), *r.target_ratio));
  }
  if (r.target_ratio.has_value() && !(*r.target_ratio > 0.0 && *r.target_ratio < 1.0)) {
    return Invalid(absl::StrFormat("%s %g must be in (0, 1)",
                                   F(r, "--target-ratio", "target_ratio"), *r.target_ratio));
  }
  if (r.target_layers.has_value() && *r.target_layers < 1) {
    return Invalid(absl::StrFormat("%s %d must be >= 1", F(r, "--target-layers", "target_layers"),
                                   *r.target_layers));
  }
  if (r.calibration_text.has_value()) {
    if (r.calibration_text->empty()) {
      return Invalid(
          absl::StrFormat("%s is empty (0 bytes); give calibration text", r.calibration_source));
    }
    return *r.calibration_text;
  }
  if (r.calibration_path.empty()) return Invalid("--calibration is empty; give a text file");
  auto text = ReadFileToString(r.calibration_path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("--calibration: ", text.status().message()));
  }
  if (text->empty()) {
    return Invalid(absl::StrFormat("--calibration %s is empty (0 bytes)", r.calibration_path));
  }
  return text;
}

absl::StatusOr<PreparedSearch> PrepareSearch(const SearchRequest& r, const Model& model,
                                             const Tokenizer& tokenizer) {
  auto text = CheckSearchRequest(r);
  if (!text.ok()) return text.status();
  const ModelConfig& c = model.config();
  PreparedSearch p;
  p.options.order = *ParsePairOrder(EffectiveOrder(r));  // checked above
  p.options.seed = r.seed;
  p.options.threshold = r.threshold;
  if (c.n_layers < 2) {
    return Invalid(absl::StrFormat("model '%s' has %d layer(s); sharing needs at least 2", c.name,
                                   c.n_layers));
  }
  if (r.target_layers.has_value()) {
    if (*r.target_layers > c.n_layers - 1) {
      return Invalid(
          absl::StrFormat("%s %d must be in [1, %d] (layer 0 always owns; '%s' has %d layers)",
                          F(r, "--target-layers", "target_layers"), *r.target_layers,
                          c.n_layers - 1, c.name, c.n_layers));
    }
    p.options.target_layers = *r.target_layers;
  } else {
    const double ratio = r.target_ratio.value_or(SearchRequest::kDefaultTargetRatio);
    const long target = std::lround(ratio * c.n_layers);
    if (target < 1 || target > c.n_layers - 1) {
      return Invalid(absl::StrFormat(
          "%s %g of %d layers rounds to %d sharing layers; must be in [1, %d]",
          F(r, "--target-ratio", "target_ratio"), ratio, c.n_layers, target, c.n_layers - 1));
    }
    p.options.target_layers = static_cast<int>(target);
  }
  if (r.calibration.tokens > c.max_seq_len) {
    return Invalid(absl::StrFormat("%s %d exceeds the context of '%s' (%d)",
                                   F(r, "--tokens", "tokens"), r.calibration.tokens, c.name,
                                   c.max_seq_len));
  }
  const std::string source =
      r.calibration_text.has_value() ? r.calibration_source : "--calibration " + r.calibration_path;
  auto set = BuildCalibrationSet(*text, tokenizer, r.calibration, source);
  if (!set.ok()) {
    return absl::Status(
        set.status().code(),
        absl::StrFormat("%s (%s %d, %s %d)", set.status().message(), F(r, "--samples", "samples"),
                        r.calibration.samples, F(r, "--tokens", "tokens"), r.calibration.tokens));
  }
  p.calibration = std::move(*set);
  p.selection.method = *ParseSearchMethod(r.method);  // checked above
  p.selection.greedy = p.options;
  p.selection.best_of = EffectiveBestOf(r);
  p.selection.lazy = EffectiveLazy(r);
  p.selection.max_nll_increase = r.max_nll_increase;
  p.selection.activations = EffectiveActivations(r);
  if (r.max_ppl_increase.has_value()) {
    KvPlanOptions plan = PlanOptionsOf(r);
    KeepHoldableTypes(&plan, {plan.block_tokens, c.n_kv_heads, c.head_dim});
    absl::Status s =
        CheckPlanCalibration(plan, p.calibration.tokens, r.field_style == FieldStyle::kCliFlag);
    if (!s.ok()) return s;
    p.plan = plan;
  }
  return p;
}

}  // namespace kvshare
