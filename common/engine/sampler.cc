#include "common/engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "kernels/cpu/log_sum_exp.h"

namespace kvshare {

absl::Status ValidateSamplingParams(const SamplingParams& p, int vocab_size) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature) || p.temperature > 100.0f) {
    return absl::InvalidArgumentError(
        absl::StrFormat("temperature %g must be in [0, 100] (0 = greedy)", p.temperature));
  }
  if (p.top_k < 0 || p.top_k > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("top_k %d must be in [0, %d] (0 = no limit)", p.top_k, vocab_size));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat("top_p %g must be in (0, 1]", p.top_p));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  const int n = static_cast<int>(logits.size());
  if (params_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  scratch_.resize(n);
  for (int i = 0; i < n; ++i) scratch_[i] = {logits[i] / params_.temperature, i};
  // Highest first; ties by id so the order is total and reproducible.
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  int keep = params_.top_k > 0 ? std::min(params_.top_k, n) : n;
  if (keep < n || params_.top_p < 1.0f) {
    if (keep < n) {
      std::partial_sort(scratch_.begin(), scratch_.begin() + keep, scratch_.end(), by_logit);
    } else {
      std::sort(scratch_.begin(), scratch_.end(), by_logit);
    }
  }
  const float max_logit =
      std::max_element(scratch_.begin(), scratch_.begin() + keep, [](auto& a, auto& b) {
        return a.first < b.first;
      })->first;
  double total = 0.0;
  for (int i = 0; i < keep; ++i) {
    scratch_[i].first = static_cast<float>(std::exp(double(scratch_[i].first) - max_logit));
    total += scratch_[i].first;
  }
  if (params_.top_p < 1.0f) {  // sorted above: the smallest prefix reaching top_p
    double mass = 0.0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
      mass += scratch_[i].first / total;
      if (mass >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    total = 0.0;
    for (int i = 0; i < keep; ++i) total += scratch_[i].first;
  }
  const double r = std::uniform_real_distribution<double>(0.0, 1.0)(rng_) * total;
  double acc = 0.0;
  for (int i = 0; i < keep; ++i) {
    acc += scratch_[i].first;
    if (r < acc) return scratch_[i].second;
  }
  return scratch_[keep - 1].second;
}

namespace {
// Vectorised on the host's SIMD level (kernels/cpu/log_sum_exp.h): a held-out pass takes one
// per target over the whole vocabulary.
double LogSumExp(absl::Span<const float> logits) {
  static const cpu::Isa isa = cpu::DetectIsa();
  return cpu::LogSumExp(isa, logits.data(), int64_t(logits.size()));
}
}  // namespace

double LogProb(absl::Span<const float> logits, int32_t id) {
  return double(logits[id]) - LogSumExp(logits);
}

std::vector<std::pair<int32_t, double>> TopLogProbs(absl::Span<const float> logits, int k) {
  const double lse = LogSumExp(logits);
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  k = std::min<int>(k, static_cast<int>(ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  std::vector<std::pair<int32_t, double>> out;
  for (int i = 0; i < k; ++i) out.emplace_back(ids[i], double(logits[ids[i]]) - lse);
  return out;
}

}  // namespace kvshare
