#include "common/engine/engine.h"

#include <algorithm>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "common/engine/query_weights.h"
#include "common/strategy/strategy_binding.h"

namespace kvshare {

namespace {

// The paged cache seen through the KvLayout interface for one step's inputs.
class PagedKvLayout : public KvLayout {
 public:
  PagedKvLayout(KvCache& cache, absl::Span<const StepInput> inputs,
                const Engine::PreparedProjections& projections)
      : cache_(cache), inputs_(inputs), projections_(projections) {}
  const KvGeometry& geometry() const override { return cache_.geometry(); }
  const KvGeometry& LayerGeometry(int layer) const override { return cache_.LayerGeometry(layer); }
  const KvGeometry& InputGeometry(int input, int layer) const override {
    return cache_.GeometryFor(inputs_[input].seq, layer);
  }
  float* pool() override { return cache_.pool(); }
  void* Tail(int input, int layer) const override {
    return cache_.TailForLayer(inputs_[input].seq, layer);
  }
  bool Owns(int input, int layer) const override {
    return cache_.strategy(inputs_[input].seq).owns(layer);
  }
  absl::Span<const int32_t> Table(int input, int layer) const override {
    return cache_.TableForLayer(inputs_[input].seq, layer);
  }
  bool DropsAttention(int input, int layer) const override {
    return cache_.strategy(inputs_[input].seq).drops(layer);
  }
  const PreparedWeight* OutputProjection(int input, int layer) const override {
    const auto& p = cache_.strategy(inputs_[input].seq).projections();
    if (p == nullptr) return nullptr;
    const int index = p->IndexOf(layer);
    if (index < 0) return nullptr;
    // Prepared when the sequence was added (Engine::AddSequence).
    return projections_.at(p->sha256()).weights[index].get();
  }
  Substitute AttentionSubstitute(int input, int layer) const override {
    const auto& p = cache_.strategy(inputs_[input].seq).projections();
    if (p == nullptr) return {};
    return projections_.at(p->sha256()).SubstituteOf(layer);
  }

 private:
  KvCache& cache_;
  absl::Span<const StepInput> inputs_;
  const Engine::PreparedProjections& projections_;
};

}  // namespace

Engine::Engine(const Model& model, std::unique_ptr<Backend> backend, const EngineOptions& options)
    : model_(model), backend_(std::move(backend)), options_(options) {}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model,
                                                       std::unique_ptr<Backend> backend,
                                                       const EngineOptions& options) {
  if (options.block_tokens < 1 || options.block_tokens > 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("engine: block_tokens %d must be in [1, 1024]", options.block_tokens));
  }
  if (options.max_step_rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("engine: max_step_rows %d must be >= 1", options.max_step_rows));
  }
  std::unique_ptr<Engine> engine(new Engine(model, std::move(backend), options));
  absl::Status status = engine->Init();
  if (!status.ok()) return status;
  return engine;
}

absl::Status Engine::Init() {
  const ModelConfig& c = config();
  identity_ = std::make_shared<const SharingStrategy>(
      SharingStrategy::Identity(c.n_layers, model_.fingerprint()));
  auto transformer = Transformer::Create(model_, *backend_, options_.max_step_rows);
  if (!transformer.ok()) return transformer.status();
  transformer_ = std::move(*transformer);
  const size_t R = options_.max_step_rows;
  for (auto* buf : {&x_, &h_}) {
    auto b = backend_->Allocate(R * c.dim * 4);
    if (!b.ok()) return b.status();
    *buf = std::move(*b);
  }

  KvGeometry g;
  g.block_tokens = options_.block_tokens;
  g.n_kv_heads = c.n_kv_heads;
  g.head_dim = c.head_dim;
  g.type = options_.kv_type;
  absl::Status valid = ValidateKvGeometry(g);
  if (valid.ok()) valid = backend_->SupportsKvType(g.type);
  if (!valid.ok()) return valid;
  // Room for default_pool_tokens unshared positions of this type (whole blocks).
  const int64_t default_bytes = (options_.default_pool_tokens + g.block_tokens - 1) /
                                g.block_tokens * g.block_bytes() * c.n_layers;
  int64_t pool_bytes = options_.kv_pool_bytes > 0 ? options_.kv_pool_bytes : default_bytes;
  if (options_.kv_memory_fraction != 0.0) {
    if (!(options_.kv_memory_fraction > 0.0 && options_.kv_memory_fraction <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "engine: kv_memory_fraction %g must be in (0, 1]", options_.kv_memory_fraction));
    }
    // Everything else the engine holds comes first, so the fraction is of what is truly left.
    absl::Status s = EnsureLogitRows(options_.max_step_rows);
    if (!s.ok()) return s;
    pool_bytes = static_cast<int64_t>(options_.kv_memory_fraction *
                                      static_cast<double>(backend_->FreeMemoryBytes()));
  }
  // A block holds one layer's K and V of block_tokens positions.
  const int64_t blocks = pool_bytes / g.block_bytes();
  if (blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("engine: KV pool of %d bytes holds no block (a block is %d bytes)",
                        pool_bytes, g.block_bytes()));
  }
  // The pool also holds every other type this backend and head_dim support, within the same
  // byte budget, so strategies whose KV plans name them run beside uniform ones (kv_pool.h).
  std::vector<KvType> also;
  for (KvType t : kAllKvTypes) {
    KvGeometry tg = g;
    tg.type = t;
    if (ValidateKvGeometry(tg).ok() && backend_->SupportsKvType(t).ok()) also.push_back(t);
  }
  auto kv = KvCache::Create(*backend_, g, blocks, also);
  if (!kv.ok()) return kv.status();
  kv_ = std::move(*kv);
  if (g.type == KvType::kInt4A) {
    absl::Status w = EnsureQueryWeights();
    if (!w.ok()) return w;
  }
  positions_.reserve(R);
  ids_.reserve(R);
  return absl::OkStatus();
}

absl::Status Engine::EnsureQueryWeights() {
  if (kv_->has_query_weights()) return absl::OkStatus();
  auto weights = QueryWeightsOf(model_);
  if (!weights.ok()) return weights.status();
  kv_->SetQueryWeights(std::move(*weights));
  return absl::OkStatus();
}

absl::StatusOr<SeqId> Engine::AddSequence(std::shared_ptr<const SharingStrategy> strategy) {
  if (strategy == nullptr) strategy = identity_;
  absl::Status s = ValidateStrategyForModel(*strategy, model_);
  if (s.ok()) s = kv_->CheckHolds(*strategy);
  bool int4a = false;
  for (int l = 0; l < strategy->n_layers() && strategy->has_kv_types(); ++l) {
    int4a |= strategy->owns(l) && strategy->kv_type(l, options_.kv_type) == KvType::kInt4A;
  }
  if (s.ok() && int4a) s = EnsureQueryWeights();
  if (!s.ok()) return s;
  if (const auto& p = strategy->projections(); p != nullptr) {
    auto it = projections_.find(p->sha256());
    if (it == projections_.end()) {
      auto entry = PrepareProjections(*backend_, p);
      if (!entry.ok()) return entry.status();
      it = projections_.emplace(p->sha256(), std::move(*entry)).first;
    }
    ++it->second.sequences;
  }
  return kv_->AddSequence(std::move(strategy));
}

KvLayout::Substitute Engine::ProjectionEntry::SubstituteOf(int layer) const {
  const int index = data->SubstituteIndexOf(layer);
  if (index < 0) return {};
  return {substitute_weights[index].get(), substitute_biases[index]->f32()};
}

absl::StatusOr<Engine::ProjectionEntry> Engine::PrepareProjections(
    Backend& backend, std::shared_ptr<const OutputProjections> data) {
  ProjectionEntry entry;
  entry.data = std::move(data);
  const OutputProjections& p = *entry.data;
  for (int i = 0; i < int(p.layers().size()); ++i) {
    auto w = backend.Prepare(p.LayerTensor(i));
    if (!w.ok()) return w.status();
    entry.weights.push_back(std::move(*w));
  }
  for (int i = 0; i < int(p.substitutes().size()); ++i) {
    auto w = backend.Prepare(p.SubstituteTensor(i));
    if (!w.ok()) return w.status();
    entry.substitute_weights.push_back(std::move(*w));
    const std::vector<float> bias = p.SubstituteBiasF32(i);
    auto b = backend.Allocate(bias.size() * sizeof(float));
    if (!b.ok()) return b.status();
    backend.CopyFromHost(bias.data(), bias.size() * sizeof(float), (*b)->data());
    entry.substitute_biases.push_back(std::move(*b));
  }
  return entry;
}

void Engine::RemoveSequence(SeqId seq) {
  if (!kv_->HasSequence(seq)) return;
  if (const auto& p = kv_->strategy(seq).projections(); p != nullptr) {
    auto it = projections_.find(p->sha256());
    if (it != projections_.end() && --it->second.sequences == 0) projections_.erase(it);
  }
  kv_->RemoveSequence(seq);
}

absl::Status Engine::EnsureLogitRows(int rows) {
  if (rows <= logit_rows_) return absl::OkStatus();
  auto b = backend_->Allocate(size_t(rows) * config().vocab_size * 4);
  if (!b.ok()) return b.status();
  logits_ = std::move(*b);
  logit_rows_ = rows;
  return absl::OkStatus();
}

absl::Status Engine::Step(absl::Span<const StepInput> inputs, std::vector<float>* logits,
                          ForwardObserver* observer) {
  const ModelConfig& c = config();
  // --- Validate everything before touching the cache.
  int rows = 0;
  KvBlockCounts blocks_needed;
  absl::flat_hash_set<SeqId> seen;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& in = inputs[i];
    if (!kv_->HasSequence(in.seq)) {
      return absl::NotFoundError(
          absl::StrFormat("engine: input %d: unknown sequence %d", i, in.seq));
    }
    if (!seen.insert(in.seq).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("engine: sequence %d appears twice in one step", in.seq));
    }
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("engine: input %d has no tokens", i));
    }
    for (int32_t id : in.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("engine: token id %d out of range [0, %d)", id, c.vocab_size));
      }
    }
    const int64_t end = kv_->length(in.seq) + int64_t(in.tokens.size());
    if (end > c.max_seq_len) {
      return absl::InvalidArgumentError(
          absl::StrFormat("engine: sequence %d would reach %d tokens, the model's context is %d",
                          in.seq, end, c.max_seq_len));
    }
    blocks_needed += kv_->MissingByType(in.seq, end);
    rows += static_cast<int>(in.tokens.size());
  }
  if (rows == 0) return absl::OkStatus();
  if (rows > options_.max_step_rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "engine: step of %d rows exceeds max_step_rows %d", rows, options_.max_step_rows));
  }
  if (!kv_->Fits(blocks_needed)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("KV pool: step needs %d more blocks, %d of %d free", blocks_needed.total(),
                        kv_->free_blocks(), kv_->total_blocks()));
  }
  for (const StepInput& in : inputs) {
    absl::Status s = kv_->Reserve(in.seq, kv_->length(in.seq) + int64_t(in.tokens.size()));
    if (!s.ok()) return s;  // cannot happen after the check above
  }
  int out_rows = 0;
  for (const StepInput& in : inputs) out_rows += in.all_logits ? int(in.tokens.size()) : 1;
  if (logits != nullptr) {
    absl::Status s = EnsureLogitRows(out_rows);
    if (!s.ok()) return s;
  }

  // --- Rows: input i occupies rows [row0, row0 + n).
  ids_.clear();
  positions_.clear();
  batch_.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int64_t start = kv_->length(inputs[i].seq);
    batch_[i] = BatchSeq{static_cast<int>(ids_.size()), static_cast<int>(inputs[i].tokens.size()),
                         static_cast<int>(start)};
    for (size_t t = 0; t < inputs[i].tokens.size(); ++t) {
      ids_.push_back(inputs[i].tokens[t]);
      positions_.push_back(static_cast<int32_t>(start + t));
    }
  }

  PagedKvLayout layout(*kv_, inputs, projections_);
  float* x = x_->f32();  // residual stream [rows][dim]
  transformer_->Embed(ids_.data(), rows, x);
  transformer_->RunLayers(0, c.n_layers, batch_, positions_.data(), rows, layout, x, observer);
  for (const StepInput& in : inputs) {
    kv_->set_length(in.seq, kv_->length(in.seq) + int64_t(in.tokens.size()));
  }
  if (logits == nullptr) return absl::OkStatus();

  // Final norm on the rows whose logits are wanted, packed in input order.
  float* h = h_->f32();
  int packed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int first = inputs[i].all_logits ? batch_[i].row0 : batch_[i].row0 + batch_[i].n - 1;
    const int count = inputs[i].all_logits ? batch_[i].n : 1;
    transformer_->FinalNorm(x + size_t(first) * c.dim, count, h + size_t(packed) * c.dim);
    packed += count;
  }
  transformer_->Logits(h, packed, logits_->f32());
  logits->resize(size_t(packed) * c.vocab_size);
  backend_->CopyToHost(logits_->f32(), logits->size() * 4, logits->data());
  return absl::OkStatus();
}

absl::Status Engine::Prefill(SeqId seq, absl::Span<const int32_t> tokens,
                             std::vector<float>* logits, bool all_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("engine: prefill of zero tokens");
  // A prefill of one step writes its logits straight into the caller's vector, which keeps its
  // size (a perplexity window's are rows x vocab floats, 100 MB on SmolLM2: a fresh vector's
  // pages and the copies into it were 3% of the pass). Longer ones append step by step.
  const bool one_step = tokens.size() <= size_t(options_.max_step_rows);
  if (one_step) return Step({StepInput{seq, tokens, all_logits}}, logits);
  if (logits != nullptr) logits->clear();
  std::vector<float> chunk_logits;
  for (size_t off = 0; off < tokens.size(); off += options_.max_step_rows) {
    const size_t n = std::min<size_t>(options_.max_step_rows, tokens.size() - off);
    const bool last = off + n == tokens.size();
    StepInput in{seq, tokens.subspan(off, n), all_logits};
    const bool want = logits != nullptr && (all_logits || last);
    absl::Status s = Step({in}, want ? &chunk_logits : nullptr);
    if (!s.ok()) return s;
    if (want) logits->insert(logits->end(), chunk_logits.begin(), chunk_logits.end());
  }
  return absl::OkStatus();
}

}  // namespace kvshare
