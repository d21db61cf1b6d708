// SharingStrategy: which layer's KV cache each layer attends over (KVSharer, DESIGN.md §1).
//
// kv_source[l] == l: layer l owns its KV cache. kv_source[l] == s < l: layer l stores no KV;
// its attention reads layer s's cache. Invariants (checked by Create, each violation named):
//   - exactly n_layers entries;
//   - layer 0 owns;
//   - kv_source[l] <= l (a source is never later than the layer);
//   - sources are roots: kv_source[kv_source[l]] == kv_source[l] (chains are collapsed).
// A strategy is bound to a model by its fingerprint; ValidateFor() rejects another model's.
// Immutable value type; content id = SHA-256 over the fingerprint and kv_source.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvshare {

struct ModelConfig;

// Where a strategy came from (carried in files and the registry; not part of the content id).
struct StrategyProvenance {
  std::string method;            // "identity", "manual", "kvsharer", ...
  std::string order;             // "dissimilar", "similar", "random"
  double threshold = 0.0;        // acceptance threshold used by the search
  std::string calibration_hash;  // hash of the calibration token ids
  int target_layers = 0;         // requested number of sharing layers
  double score = 0.0;            // calibration score of the final strategy
  std::string note;

  // Selection rule parameters beyond the paper's (search_service/selection_rules.h).
  int best_of = 0;                // candidates scored per step (0: not recorded; 1: the paper's)
  double max_nll_increase = 0.0;  // NLL acceptance cap, nats/token over unshared (0: not used)

  // Measured quality (search_service/heldout_quality.h); heldout_tokens == 0: not measured.
  // Perplexity with and without the strategy on a fixed held-out slice disjoint from the
  // calibration lines, scored in windows of heldout_context tokens.
  double heldout_ppl = 0.0;
  double baseline_ppl = 0.0;
  int64_t heldout_tokens = 0;
  int heldout_context = 0;
  std::string heldout_hash;  // hash of the held-out token ids
  // Mean cosine similarity of final-norm hidden states to the unshared model's on the
  // calibration set (the paper's score), whatever rule chose the strategy.
  double calibration_score = 0.0;
  bool has_quality() const { return heldout_tokens > 0; }
  // ln(heldout_ppl / baseline_ppl): the held-out NLL increase in nats/token.
  double heldout_nll_increase() const;
};

class SharingStrategy {
 public:
  // The unmodified model: every layer owns.
  static SharingStrategy Identity(int n_layers, const std::string& model_fingerprint);
  // Validates the invariants above; InvalidArgument naming the layer and the rule otherwise.
  static absl::StatusOr<SharingStrategy> Create(std::vector<int> kv_source,
                                                const std::string& model_fingerprint);

  // Checks the strategy fits a model: layer count and fingerprint.
  absl::Status ValidateFor(const ModelConfig& config, const std::string& model_fingerprint) const;

  const std::vector<int>& kv_source() const { return kv_source_; }
  int source(int layer) const { return kv_source_[layer]; }
  bool owns(int layer) const { return kv_source_[layer] == layer; }
  int n_layers() const { return static_cast<int>(kv_source_.size()); }
  int owning_layers() const;
  int sharing_layers() const { return n_layers() - owning_layers(); }
  bool is_identity() const { return sharing_layers() == 0; }
  const std::string& model_fingerprint() const { return model_fingerprint_; }
  // Hex SHA-256 of "kvshare-strategy-v1\n" + fingerprint + "\n" + kv_source as decimal list.
  const std::string& id() const { return id_; }
  // "0 1 1 3 ..." — the canonical text form of kv_source.
  std::string CanonicalString() const;

  StrategyProvenance& provenance() { return provenance_; }
  const StrategyProvenance& provenance() const { return provenance_; }

  // JSON form for files and the CLI:
  //   {"format": "kvshare.strategy.v1", "model_fingerprint": "...", "n_layers": 30,
  //    "kv_source": [0, 1, 1, ...], "id": "...", "provenance": {...}}
  // "id", when present, must match the content (a file edited by hand is caught).
  std::string ToJson() const;
  // Every field is read through checked accessors (common/util/json_fields.h): a wrong type,
  // a value out of range (kv_source entries beyond int32 included) or a string past its limit
  // (common/limits.h) is InvalidArgument naming `where`, the field, the value and the
  // expectation; never an exception.
  static absl::StatusOr<SharingStrategy> FromJson(const std::string& json);
  static absl::StatusOr<SharingStrategy> FromJson(const std::string& json,
                                                  const std::string& where);
  // Reads at most kMaxStrategyFileBytes (a larger or endless file is refused).
  static absl::StatusOr<SharingStrategy> ReadFile(const std::string& path);
  // The provenance's strings within their limits (method, order: kMaxNameBytes; hashes:
  // kMaxIdBytes; note: kMaxTextFieldBytes); InvalidArgument naming `prefix`.field.
  static absl::Status CheckProvenance(const StrategyProvenance& p, const std::string& prefix);
  absl::Status WriteFile(const std::string& path) const;

 private:
  SharingStrategy() = default;
  std::vector<int> kv_source_;
  std::string model_fingerprint_;
  std::string id_;
  StrategyProvenance provenance_;
};

}  // namespace kvshare
