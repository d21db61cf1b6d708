#include "search_service/greedy_search.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

// Uniform in [0, bound) from a 64-bit generator, without modulo bias: values below
// 2^64 mod bound are rejected, leaving a multiple of bound equally likely outcomes.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t reject_below = (0 - bound) % bound;  // == 2^64 mod bound
  for (;;) {
    const uint64_t u = rng();
    if (u >= reject_below) return u % bound;
  }
}

}  // namespace

const char* PairOrderName(PairOrder order) {
  switch (order) {
    case PairOrder::kDissimilar:
      return "dissimilar";
    case PairOrder::kSimilar:
      return "similar";
    case PairOrder::kRandom:
      return "random";
  }
  return "?";
}

absl::StatusOr<PairOrder> ParsePairOrder(const std::string& name) {
  for (PairOrder o : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    if (name == PairOrderName(o)) return o;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("order '%s' is not one of dissimilar, similar, random", name));
}

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kTargetReached:
      return "target reached";
    case StopReason::kPairsExhausted:
      return "pairs exhausted";
  }
  return "?";
}

std::vector<LayerPair> OrderPairs(const LayerDistances& distances, PairOrder order, uint64_t seed) {
  const int L = distances.n_layers();
  std::vector<LayerPair> pairs;
  pairs.reserve(size_t(L) * (L - 1) / 2);
  for (int i = 1; i < L; ++i) {
    for (int j = 0; j < i; ++j) {
      if (distances.allowed(i, j)) pairs.push_back({i, j});
    }
  }
  auto by_ij = [](const LayerPair& a, const LayerPair& b) {
    return a.i != b.i ? a.i < b.i : a.j < b.j;
  };
  switch (order) {
    case PairOrder::kDissimilar:
    case PairOrder::kSimilar: {
      const bool descending = order == PairOrder::kDissimilar;
      std::sort(pairs.begin(), pairs.end(), [&](const LayerPair& a, const LayerPair& b) {
        const double da = distances.distance(a.i, a.j), db = distances.distance(b.i, b.j);
        if (da != db) return descending ? da > db : da < db;
        return by_ij(a, b);
      });
      break;
    }
    case PairOrder::kRandom: {
      std::mt19937_64 rng(seed);
      for (size_t k = pairs.size(); k > 1; --k) {
        const uint64_t r = UniformBelow(rng, k);  // in [0, k - 1]
        std::swap(pairs[k - 1], pairs[r]);
      }
      break;
    }
  }
  return pairs;
}

std::vector<int> ApplyPair(const std::vector<int>& kv_source, int i, int j) {
  std::vector<int> out = kv_source;
  const int root = kv_source[j];
  // Chains collapse to roots: i and everything that read i now read root(j).
  for (size_t l = 0; l < out.size(); ++l) {
    if (out[l] == i) out[l] = root;
  }
  return out;
}

int CountSharingLayers(const std::vector<int>& kv_source) {
  int n = 0;
  for (size_t l = 0; l < kv_source.size(); ++l) n += kv_source[l] != int(l);
  return n;
}

GreedyProgress ProgressBefore(const GreedyResult& state, const std::vector<LayerPair>& pairs,
                              size_t pair_index, int target_layers) {
  GreedyProgress g;
  g.pair_index = int(pair_index);
  g.pairs_total = int(pairs.size());
  g.pair = pairs[pair_index];
  g.accepted = state.accepted;
  g.sharing_layers = CountSharingLayers(state.kv_source);
  g.target_layers = target_layers;
  g.pairs_scored = int(state.trace.size());
  g.score = state.score;
  g.kv_source = state.kv_source;
  return g;
}

PairTrial CandidateTrial(const LayerDistances& distances, const std::vector<int>& kv_source, int i,
                         int j) {
  PairTrial trial;
  trial.i = i;
  trial.j = j;
  trial.distance = distances.distance(i, j);
  trial.kv_source = ApplyPair(kv_source, i, j);
  return trial;
}

absl::Status CheckEvaluatorCandidate(const std::vector<int>& accepted,
                                     const std::vector<int>& kv_source, int first) {
  const int n_layers = int(accepted.size());
  if (int(kv_source.size()) != n_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("candidate has %d layers, the model %d", kv_source.size(), n_layers));
  }
  if (first < 1 || first >= n_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("first changed layer %d must be in [1, %d)", first, n_layers));
  }
  for (int l = 0; l < n_layers; ++l) {
    const int s = kv_source[l];
    if (s < 0 || s > l || kv_source[s] != s) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "candidate layer %d reads %d: sources must be earlier or equal roots", l, s));
    }
    if (l < first && s != accepted[l]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "candidate layer %d reads %d, the accepted strategy %d, but the first changed layer "
          "is said to be %d",
          l, s, accepted[l], first));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateGreedyOptions(const GreedyOptions& options, int n_layers) {
  if (n_layers < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the model has %d layer(s); sharing needs at least 2", n_layers));
  }
  if (options.target_layers < 1 || options.target_layers > n_layers - 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "target layers %d must be in [1, %d] (layer 0 always owns; the model has %d layers)",
        options.target_layers, n_layers - 1, n_layers));
  }
  if (!(options.threshold > -1.0 && options.threshold <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "threshold %g must be in (-1, 1] (a cosine similarity; accepted when above it)",
        options.threshold));
  }
  return absl::OkStatus();
}

absl::StatusOr<GreedyResult> GreedySearch(const LayerDistances& distances,
                                          const GreedyOptions& options, Evaluator& evaluator,
                                          const GreedyProgressFn& progress,
                                          const std::atomic<bool>* cancel) {
  const int L = distances.n_layers();
  absl::Status valid = ValidateGreedyOptions(options, L);
  if (!valid.ok()) return valid;

  GreedyResult result;
  result.kv_source.resize(L);
  for (int l = 0; l < L; ++l) result.kv_source[l] = l;
  const std::vector<LayerPair> pairs = OrderPairs(distances, options.order, options.seed);
  int sharing = 0;
  for (size_t p = 0; p < pairs.size(); ++p) {
    const auto [i, j] = pairs[p];
    if (result.kv_source[i] != i) {  // i already shares
      ++result.pairs_skipped;
      continue;
    }
    if (progress) progress(ProgressBefore(result, pairs, p, options.target_layers));
    if (cancel != nullptr && cancel->load(std::memory_order_acquire)) {
      return absl::CancelledError(
          absl::StrFormat("search cancelled after %d pairs scored (%d accepted) of %d",
                          result.trace.size(), result.accepted, pairs.size()));
    }
    PairTrial trial = CandidateTrial(distances, result.kv_source, i, j);
    // Layers below i are unchanged by the candidate rule.
    auto score = evaluator.Score(trial.kv_source, i);
    if (!score.ok()) return score.status();
    trial.score = *score;
    trial.accepted = trial.score > options.threshold;
    if (trial.accepted) {
      absl::Status s = evaluator.Accept(trial.kv_source, i);
      if (!s.ok()) return s;
      result.kv_source = trial.kv_source;
      result.score = trial.score;
      ++result.accepted;
      sharing = CountSharingLayers(result.kv_source);
    }
    result.trace.push_back(std::move(trial));
    if (sharing >= options.target_layers) {
      result.stop = StopReason::kTargetReached;
      return result;
    }
  }
  result.stop = StopReason::kPairsExhausted;
  return result;
}

absl::StatusOr<std::vector<int>> StrategyAfterAccepts(const std::vector<PairTrial>& trace,
                                                      int n_layers, int accepts) {
  std::vector<int> kv_source(n_layers);
  for (int l = 0; l < n_layers; ++l) kv_source[l] = l;
  int seen = 0;
  for (const PairTrial& t : trace) {
    if (seen == accepts) break;
    if (!t.accepted) continue;
    kv_source = t.kv_source;
    ++seen;
  }
  if (seen < accepts) {
    return absl::OutOfRangeError(
        absl::StrFormat("the trace has %d acceptances, %d asked for", seen, accepts));
  }
  return kv_source;
}

}  // namespace kvshare
