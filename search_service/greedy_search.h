// The greedy strategy search of the KVSharer method (docs/METHOD.md §3), independent of how a
// candidate is scored: the scoring is behind Evaluator, so the rules can be checked with a fake.
//
// Pairs (i, j), i > j, are tried in an order (PairOrder). Starting from the identity strategy,
// for each pair: skip it if layer i already shares; otherwise the candidate is the accepted
// strategy with i reading root(j) and every layer that read i now reading root(j) (chains
// collapse to roots; ApplyPair). Score it; accept when score > threshold. Stop as soon as the
// number of sharing layers reaches the target, or when the pairs run out.
//
// Deterministic: no clocks, no unordered containers; the random order is a documented shuffle.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "search_service/layer_distance.h"

namespace kvshare {

enum class PairOrder {
  kDissimilar,  // distance descending (the method); ties by (i, j) ascending
  kSimilar,     // distance ascending (ablation); ties by (i, j) ascending
  kRandom,      // ablation: see OrderPairs
};
const char* PairOrderName(PairOrder order);
// "dissimilar", "similar", "random"; InvalidArgument naming the value otherwise.
absl::StatusOr<PairOrder> ParsePairOrder(const std::string& name);

struct LayerPair {
  int i = 0;  // the later layer: the one that would stop owning
  int j = 0;  // the earlier layer
};

// Every allowed pair (i, j), 0 <= j < i < L (LayerDistances::allowed: all but those a model's
// local/global rule forbids), in the search order.
// kRandom: the pairs in (i, j) ascending order, then shuffled by Fisher–Yates driven by
// std::mt19937_64(seed): for k = n-1 down to 1, swap element k with element r, r uniform in
// [0, k] drawn by rejection (draw u; reject u < 2^64 mod (k+1); r = u mod (k+1)). Unlike
// std::shuffle this is the same sequence with every standard library.
std::vector<LayerPair> OrderPairs(const LayerDistances& distances, PairOrder order, uint64_t seed);

// The candidate rule: i reads root(j), and every layer that read i reads root(j).
// Requires kv_source valid (roots only), j < i, and i owning.
std::vector<int> ApplyPair(const std::vector<int>& kv_source, int i, int j);

// Layers that read another layer's cache (kv_source[l] != l).
int CountSharingLayers(const std::vector<int>& kv_source);

// Scores candidate strategies against the unshared model.
class Evaluator {
 public:
  virtual ~Evaluator() = default;
  // The score of `kv_source`, which differs from the accepted strategy in layers >=
  // first_changed_layer only (layers below it are identical: an evaluator may reuse the
  // accepted strategy's state up to that layer).
  virtual absl::StatusOr<double> Score(const std::vector<int>& kv_source,
                                       int first_changed_layer) = 0;
  // Makes `kv_source` (normally the candidate just scored) the accepted strategy.
  virtual absl::Status Accept(const std::vector<int>& kv_source, int first_changed_layer) = 0;
};

// The Evaluator contract for a candidate of an n-layer model: kv_source has one entry per
// layer, every source is an earlier-or-equal root, 1 <= first_changed_layer < n, and layers
// below first_changed_layer read what `accepted` reads. InvalidArgument naming the layer.
absl::Status CheckEvaluatorCandidate(const std::vector<int>& accepted,
                                     const std::vector<int>& kv_source, int first_changed_layer);

struct GreedyOptions {
  PairOrder order = PairOrder::kDissimilar;
  uint64_t seed = 0;       // kRandom only
  double threshold = 0.5;  // accept when score > threshold; must be in (-1, 1]
  int target_layers = 0;   // stop when this many layers share; must be in [1, L - 1]
};

// Checks options for a model of n_layers; InvalidArgument naming the field, value and limit.
absl::Status ValidateGreedyOptions(const GreedyOptions& options, int n_layers);

struct PairTrial {
  int i = 0, j = 0;
  double distance = 0.0;
  double score = 0.0;
  bool accepted = false;
  std::vector<int> kv_source;  // the candidate
};

enum class StopReason { kTargetReached, kPairsExhausted };
const char* StopReasonName(StopReason reason);

struct GreedyResult {
  std::vector<int> kv_source;    // the accepted strategy at the end
  std::vector<PairTrial> trace;  // every pair scored, in order
  int pairs_skipped = 0;         // pairs whose i already shared
  int accepted = 0;
  StopReason stop = StopReason::kPairsExhausted;
  double score = 1.0;  // score of the final strategy (1 for the identity: nothing changed)
};

// Called before each pair is scored.
struct GreedyProgress {
  int pair_index = 0;  // 0-based position in the order
  int pairs_total = 0;
  LayerPair pair;
  int accepted = 0;
  int sharing_layers = 0;
  int target_layers = 0;
  int pairs_scored = 0;        // pairs scored before this one
  double score = 1.0;          // score of the accepted strategy (the current best)
  std::vector<int> kv_source;  // the accepted strategy
};
using GreedyProgressFn = std::function<void(const GreedyProgress&)>;

// What a search reports before it scores pairs[pair_index] against its accepted state.
GreedyProgress ProgressBefore(const GreedyResult& state, const std::vector<LayerPair>& pairs,
                              size_t pair_index, int target_layers);

// Candidate (i, j) of the accepted kv_source (ApplyPair) with its distance; not yet scored.
PairTrial CandidateTrial(const LayerDistances& distances, const std::vector<int>& kv_source, int i,
                         int j);

// `cancel` (optional): read before each candidate is scored; once true the search stops there
// (so within one candidate evaluation of the request) with a Cancelled status.
absl::StatusOr<GreedyResult> GreedySearch(const LayerDistances& distances,
                                          const GreedyOptions& options, Evaluator& evaluator,
                                          const GreedyProgressFn& progress = nullptr,
                                          const std::atomic<bool>* cancel = nullptr);

// The accepted strategy after the first `accepts` acceptances of a trace (identity for 0).
// The greedy run to target K passes through exactly these strategies, so a run to 12 shared
// layers also gives the results for targets 4 and 8. OutOfRange when the trace has fewer.
absl::StatusOr<std::vector<int>> StrategyAfterAccepts(const std::vector<PairTrial>& trace,
                                                      int n_layers, int accepts);

}  // namespace kvshare
