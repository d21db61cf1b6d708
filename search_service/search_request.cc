#include "search_service/search_request.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/file.h"

namespace kvshare {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

}  // namespace

absl::StatusOr<std::string> CheckSearchRequest(const SearchRequest& r) {
  if (!ParsePairOrder(r.order).ok()) {
    return Invalid(
        absl::StrFormat("--order '%s' is not one of dissimilar, similar, random", r.order));
  }
  if (r.calibration.samples < 1) {
    return Invalid(absl::StrFormat("--samples %d must be >= 1", r.calibration.samples));
  }
  if (r.calibration.tokens < 1) {
    return Invalid(absl::StrFormat("--tokens %d must be >= 1", r.calibration.tokens));
  }
  if (!(r.threshold > -1.0 && r.threshold <= 1.0)) {
    return Invalid(absl::StrFormat(
        "--threshold %g must be in (-1, 1] (a cosine similarity; accepted when above it)",
        r.threshold));
  }
  if (r.target_layers.has_value() && r.target_ratio.has_value()) {
    return Invalid(absl::StrFormat("--target-layers %d and --target-ratio %g: give one",
                                   *r.target_layers, *r.target_ratio));
  }
  if (r.target_ratio.has_value() && !(*r.target_ratio > 0.0 && *r.target_ratio < 1.0)) {
    return Invalid(absl::StrFormat("--target-ratio %g must be in (0, 1)", *r.target_ratio));
  }
  if (r.target_layers.has_value() && *r.target_layers < 1) {
    return Invalid(absl::StrFormat("--target-layers %d must be >= 1", *r.target_layers));
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
  p.options.order = *ParsePairOrder(r.order);
  p.options.seed = r.seed;
  p.options.threshold = r.threshold;
  if (c.n_layers < 2) {
    return Invalid(absl::StrFormat("model '%s' has %d layer(s); sharing needs at least 2", c.name,
                                   c.n_layers));
  }
  if (r.target_layers.has_value()) {
    if (*r.target_layers > c.n_layers - 1) {
      return Invalid(absl::StrFormat(
          "--target-layers %d must be in [1, %d] (layer 0 always owns; '%s' has %d layers)",
          *r.target_layers, c.n_layers - 1, c.name, c.n_layers));
    }
    p.options.target_layers = *r.target_layers;
  } else {
    const double ratio = r.target_ratio.value_or(SearchRequest::kDefaultTargetRatio);
    const long target = std::lround(ratio * c.n_layers);
    if (target < 1 || target > c.n_layers - 1) {
      return Invalid(absl::StrFormat(
          "--target-ratio %g of %d layers rounds to %d sharing layers; must be in [1, %d]", ratio,
          c.n_layers, target, c.n_layers - 1));
    }
    p.options.target_layers = static_cast<int>(target);
  }
  if (r.calibration.tokens > c.max_seq_len) {
    return Invalid(absl::StrFormat("--tokens %d exceeds the context of '%s' (%d)",
                                   r.calibration.tokens, c.name, c.max_seq_len));
  }
  auto set =
      BuildCalibrationSet(*text, tokenizer, r.calibration, "--calibration " + r.calibration_path);
  if (!set.ok()) {
    return absl::Status(set.status().code(),
                        absl::StrFormat("%s (--samples %d, --tokens %d)", set.status().message(),
                                        r.calibration.samples, r.calibration.tokens));
  }
  p.calibration = std::move(*set);
  return p;
}

}  // namespace kvshare
