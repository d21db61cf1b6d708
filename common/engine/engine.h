// Serving-side forward passes: the Transformer's layers over the paged, layer-aliased KvCache.
//
// One Step() runs a batch of sequences through the model together: each contributes the
// tokens it appends this step (a prompt chunk in prefill, one token in decode), so continuous
// batching mixes prefill and decode rows in one pass, and sequences running different
// strategies share the step and the pool.
//
// Not thread-safe: one thread drives an engine (the backend parallelises inside each op).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/engine/kv_cache.h"
#include "common/engine/transformer.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"

namespace kvshare {

struct EngineOptions {
  int block_tokens = 16;
  // How the pool stores K/V (kernels/kv_type.h), for every owning layer. The library default
  // is exact fp32 (what the golden tests and the strategy search pin); serving entry points
  // (kvshare-worker, the kvshare commands) default to f16 like llama.cpp and vLLM.
  KvType kv_type = KvType::kF32;
  // KV pool size in bytes; 0 = room for `default_pool_tokens` unshared tokens of kv_type.
  int64_t kv_pool_bytes = 0;
  int64_t default_pool_tokens = 8192;
  // > 0: the pool takes this fraction (0, 1] of the backend's free memory once the weights,
  // the scratch and the logits of max_step_rows rows are allocated (overrides kv_pool_bytes).
  double kv_memory_fraction = 0.0;
  // Most rows (tokens over all sequences) one forward pass processes; longer prefills are
  // split into chunks of this many tokens.
  int max_step_rows = 256;
};

// What one sequence contributes to a step.
struct StepInput {
  SeqId seq = 0;
  absl::Span<const int32_t> tokens;
  bool all_logits = false;  // logits for every row (perplexity); else for the last row only
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Model& model,
                                                        std::unique_ptr<Backend> backend,
                                                        const EngineOptions& options = {});
  ~Engine();

  const Model& model() const { return model_; }
  const ModelConfig& config() const { return model_.config(); }
  Backend& backend() { return *backend_; }
  KvCache& kv_cache() { return *kv_; }
  const SharingStrategy& identity() const { return *identity_; }

  // A new empty sequence; null strategy = identity. The strategy must fit this model. Its
  // output projections (when any) are prepared for the backend here, once per distinct set
  // (by content hash) while a sequence uses it, so Step applies each sequence's own.
  absl::StatusOr<SeqId> AddSequence(std::shared_ptr<const SharingStrategy> strategy = nullptr);
  void RemoveSequence(SeqId seq);

  // One forward pass over `inputs` (distinct sequences, total rows <= max_step_rows).
  // Appends each input's tokens to its cache. logits (when non-null) gets, input by input,
  // the rows asked for, each vocab_size floats. InvalidArgument for bad ids/positions,
  // ResourceExhausted when the KV pool is full (then nothing is appended for any input).
  absl::Status Step(absl::Span<const StepInput> inputs, std::vector<float>* logits,
                    ForwardObserver* observer = nullptr);
  Transformer& transformer() { return *transformer_; }

  // Output projections prepared for the backend, by content hash, with the sequences using
  // them.
  struct ProjectionEntry {
    std::shared_ptr<const OutputProjections> data;         // the bytes the weights may point into
    std::vector<std::unique_ptr<PreparedWeight>> weights;  // parallel to data->layers()
    // Parallel to data->substitutes(): the maps and their biases (dim floats each).
    std::vector<std::unique_ptr<PreparedWeight>> substitute_weights;
    std::vector<std::unique_ptr<Buffer>> substitute_biases;
    int sequences = 0;
    // The substitute of `layer`, or nulls.
    KvLayout::Substitute SubstituteOf(int layer) const;
  };
  // `data` prepared for `backend` (sequences 0).
  static absl::StatusOr<ProjectionEntry> PrepareProjections(
      Backend& backend, std::shared_ptr<const OutputProjections> data);
  using PreparedProjections = absl::flat_hash_map<std::string, ProjectionEntry>;

  // Appends `tokens` to `seq` in chunks; logits of the last token (or of every token).
  absl::Status Prefill(SeqId seq, absl::Span<const int32_t> tokens, std::vector<float>* logits,
                       bool all_logits = false);

 private:
  Engine(const Model& model, std::unique_ptr<Backend> backend, const EngineOptions& options);
  absl::Status Init();
  absl::Status EnsureLogitRows(int rows);
  // Before the first sequence stores a layer as int4a: the model's query weights
  // (query_weights.h), tokenising the probe text with the model's own tokenizer.
  absl::Status EnsureQueryWeights();

  const Model& model_;
  std::unique_ptr<Backend> backend_;
  EngineOptions options_;
  std::unique_ptr<Transformer> transformer_;
  std::unique_ptr<KvCache> kv_;
  std::shared_ptr<const SharingStrategy> identity_;
  PreparedProjections projections_;
  std::unique_ptr<Buffer> x_, h_, logits_;  // residual, final-normed rows, logits
  int logit_rows_ = 0;
  std::vector<int32_t> positions_, ids_;
  std::vector<BatchSeq> batch_;
};

// Removes a sequence from its engine on every exit path.
class ScopedSequence {
 public:
  ScopedSequence(Engine& engine, SeqId seq) : engine_(engine), seq_(seq) {}
  ~ScopedSequence() { engine_.RemoveSequence(seq_); }
  ScopedSequence(const ScopedSequence&) = delete;
  ScopedSequence& operator=(const ScopedSequence&) = delete;
  SeqId id() const { return seq_; }

 private:
  Engine& engine_;
  SeqId seq_;
};

}  // namespace kvshare
