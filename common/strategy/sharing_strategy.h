// SharingStrategy: which layer's KV cache each layer attends over (KVSharer, docs/METHOD.md §1).
//
// kv_source[l] == l: layer l owns its KV cache. kv_source[l] == s < l: layer l stores no KV;
// its attention reads layer s's cache. Invariants (checked by Create, each violation named):
//   - exactly n_layers entries;
//   - layer 0 owns;
//   - kv_source[l] <= l (a source is never later than the layer);
//   - sources are roots: kv_source[kv_source[l]] == kv_source[l] (chains are collapsed).
//
// Two extensions (issue 18), both absent from strategies made before them, whose files, JSON
// and content ids are unchanged:
//   - attention drop: a dropped layer skips attention altogether (no K/V stored, no attention
//     computed, attention output zero; its FFN still runs). Listed in attention_dropped (JSON
//     "attention_dropped"); its kv_source entry is its own index, it must be >= 1, and no layer
//     may read it. It is not an owning layer.
//   - output projections: a sharing layer may carry a replacement W_o (output_projections.h),
//     applied by the engine to the rows of sequences running this strategy only.
// A third (issue 17), absent likewise from older strategies:
//   - a KV plan: per layer, the KvType its cache is stored in (kernels/kv_type.h). Rule: every
//     layer has an entry and kv_types[l] == kv_types[kv_source[l]] — a sharing layer names its
//     source's type (it reads that cache as stored); an owning or dropped layer is its own
//     source, so its entry is free (a dropped layer's stores nothing and costs no bytes). A
//     strategy without a plan (has_kv_types() false) stores every owning layer in the pool's
//     uniform type (--kv-type), exactly as before plans existed.
// A strategy is bound to a model by its fingerprint; ValidateFor() rejects another model's.
// Immutable value type; content id = SHA-256 over the fingerprint and kv_source, plus the
// dropped layers, the projections' hash and the plan's types when there are any.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/strategy/output_projections.h"
#include "kernels/kv_type.h"

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
  // The same with layers whose attention is dropped (ascending or not; duplicates rejected).
  static absl::StatusOr<SharingStrategy> Create(std::vector<int> kv_source,
                                                const std::string& model_fingerprint,
                                                std::vector<int> attention_dropped);
  // This strategy with replacement output projections (null: none). InvalidArgument unless
  // every projected layer is a sharing layer (kv_source[l] < l). Provenance is kept.
  absl::StatusOr<SharingStrategy> WithProjections(
      std::shared_ptr<const OutputProjections> projections) const;

  // This strategy with a KV plan: kv_types[l] is layer l's type (size n_layers; a sharing
  // layer's must equal its source's). InvalidArgument naming the layer otherwise. Provenance
  // is kept; the id changes (it covers the plan).
  absl::StatusOr<SharingStrategy> WithKvTypes(std::vector<KvType> kv_types) const;
  // Whether the strategy carries a KV plan (false for strategies made without one).
  bool has_kv_types() const { return !kv_types_.empty(); }
  // The type layer `layer`'s cache is stored in — for a sharing layer its source's — or
  // `fallback` (the pool's uniform type) when the strategy has no plan.
  KvType kv_type(int layer, KvType fallback) const {
    return kv_types_.empty() ? fallback : kv_types_[kv_source_[layer]];
  }
  // The plan (empty without one).
  const std::vector<KvType>& kv_types() const { return kv_types_; }
  // Exact KV bytes per position of this strategy on a model with KV geometry `g` (g.type: the
  // fallback for a strategy without a plan): the sum over owning layers of their type's
  // block_bytes / block_tokens. What the pool holds for a sequence of a multiple of
  // block_tokens positions, int4's per-sequence f16 tails aside (KvTailBytes()).
  double KvBytesPerToken(const KvGeometry& g) const;
  // Bytes of the f16 tails one sequence of this strategy holds (int4 owning layers only).
  int64_t KvTailBytes(const KvGeometry& g) const;

  // Checks the strategy fits a model: layer count, fingerprint, and that every sharing layer
  // may read its source's cache (ModelConfig::CanReadCacheOf: Gemma 3's local/global rule).
  absl::Status ValidateFor(const ModelConfig& config, const std::string& model_fingerprint) const;

  const std::vector<int>& kv_source() const { return kv_source_; }
  int source(int layer) const { return kv_source_[layer]; }
  bool owns(int layer) const { return kv_source_[layer] == layer && !drops(layer); }
  // Whether `layer` skips attention (stores no K/V, attention output zero).
  bool drops(int layer) const;
  const std::vector<int>& attention_dropped() const { return attention_dropped_; }
  int n_layers() const { return static_cast<int>(kv_source_.size()); }
  int owning_layers() const;
  // Layers that store no K/V: sharing and dropped ones.
  int sharing_layers() const { return n_layers() - owning_layers(); }
  bool is_identity() const { return sharing_layers() == 0; }
  // Replacement output projections (null when none).
  const std::shared_ptr<const OutputProjections>& projections() const { return projections_; }
  const std::string& model_fingerprint() const { return model_fingerprint_; }
  // Hex SHA-256 of "kvshare-strategy-v1\n" + fingerprint + "\n" + kv_source as decimal list,
  // then "\ndrop " + the dropped layers (when any), then "\nprojections " + their sha256
  // (when any), then "\nkv_types " + the plan's type names, comma-separated (when any).
  const std::string& id() const { return id_; }
  // "0 1 1 3 ..." — the canonical text form of kv_source; a dropped layer shows as "x" and a
  // layer with a replacement projection as "<source>*" ("0 1 0* x 4"). With a KV plan each
  // owning layer also shows its type ("0:f16 1:int4 1 x 4:int8"); sharing layers read their
  // source's, so they show none.
  std::string CanonicalString() const;

  StrategyProvenance& provenance() { return provenance_; }
  const StrategyProvenance& provenance() const { return provenance_; }

  // JSON form for files and the CLI:
  //   {"format": "kvshare.strategy.v1", "model_fingerprint": "...", "n_layers": 30,
  //    "kv_source": [0, 1, 1, ...], "id": "...", "provenance": {...}}
  // "id", when present, must match the content (a file edited by hand is caught).
  // With drops: "attention_dropped": [3, 7]. With a KV plan: "kv_types": ["f16", "int4", ...]
  // (n_layers names, kernels/kv_type.h). With projections: "output_projections":
  //   {"type": "f16", "rows": 576, "cols": 576, "layers": [...], "sha256": "...",
  //    "file": "projections-<sha256>.bin", "bytes_per_layer": N}
  // naming a sidecar blob beside the JSON file (content-addressed, so strategies that share
  // projections share the file). FromJson reads the blob from `blob_dir`; with an empty
  // blob_dir a JSON with projections is FailedPrecondition (the caller cannot resolve it).
  std::string ToJson() const;
  // Every field is read through checked accessors (common/util/json_fields.h): a wrong type,
  // a value out of range (kv_source entries beyond int32 included) or a string past its limit
  // (common/limits.h) is InvalidArgument naming `where`, the field, the value and the
  // expectation; never an exception. Projections are read from `blob_dir`.
  static absl::StatusOr<SharingStrategy> FromJson(const std::string& json);
  static absl::StatusOr<SharingStrategy> FromJson(const std::string& json, const std::string& where,
                                                  const std::string& blob_dir = "");
  // Reads at most kMaxStrategyFileBytes (a larger or endless file is refused), and the
  // projections blob from the file's directory.
  static absl::StatusOr<SharingStrategy> ReadFile(const std::string& path);
  // The provenance's strings within their limits (method, order: kMaxNameBytes; hashes:
  // kMaxIdBytes; note: kMaxTextFieldBytes); InvalidArgument naming `prefix`.field.
  static absl::Status CheckProvenance(const StrategyProvenance& p, const std::string& prefix);
  // Writes the projections blob (when any) beside `path`, then the JSON; both atomically.
  absl::Status WriteFile(const std::string& path) const;

 private:
  SharingStrategy() = default;
  void ComputeId();
  std::vector<int> kv_source_;
  std::vector<int> attention_dropped_;  // ascending
  std::vector<KvType> kv_types_;        // empty: no plan
  std::shared_ptr<const OutputProjections> projections_;
  std::string model_fingerprint_;
  std::string id_;
  StrategyProvenance provenance_;
};

}  // namespace kvshare
