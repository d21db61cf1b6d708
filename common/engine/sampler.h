// Next-token sampling: greedy, temperature, top-k, top-p (nucleus), seeded and reproducible.
//
// temperature == 0 is greedy (argmax; ties to the lowest id). Otherwise logits are divided by
// the temperature, restricted to the top_k highest (0 = all), then to the smallest prefix of
// the probability-sorted tokens whose mass reaches top_p (1 = all), and one token is drawn with
// the sampler's own generator (std::mt19937_64 seeded with `seed`): the same seed and logits
// give the same tokens on every machine and thread count.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvshare {

struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
};

// InvalidArgument naming the field, the value and the allowed range.
absl::Status ValidateSamplingParams(const SamplingParams& p, int vocab_size);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t Sample(absl::Span<const float> logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

// log softmax(logits)[id], computed stably.
double LogProb(absl::Span<const float> logits, int32_t id);
// The `k` most likely ids with their log-probabilities, most likely first.
std::vector<std::pair<int32_t, double>> TopLogProbs(absl::Span<const float> logits, int k);

}  // namespace kvshare
