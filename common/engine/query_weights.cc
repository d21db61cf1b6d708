#include "common/engine/query_weights.h"

#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/engine.h"
#include "common/engine/quality_probe.h"
#include "kernels/backend.h"

namespace kvshare {
namespace {

// Sums q_c^2 over the rows of every layer, channel by channel of the KV heads.
class QuerySquares : public ForwardObserver {
 public:
  explicit QuerySquares(const ModelConfig& c)
      : c_(c), sums_(c.n_layers, std::vector<double>(int64_t(c.n_kv_heads) * c.head_dim)) {}

  void OnQuery(int layer, const float* q, int rows) override {
    const int group = c_.n_heads / c_.n_kv_heads, hd = c_.head_dim;
    std::vector<double>& sum = sums_[layer];
    for (int r = 0; r < rows; ++r) {
      const float* row = q + int64_t(r) * c_.n_heads * hd;
      for (int h = 0; h < c_.n_heads; ++h) {
        const int64_t kv = int64_t(h / group) * hd;
        for (int i = 0; i < hd; ++i) sum[kv + i] += double(row[h * hd + i]) * row[h * hd + i];
      }
    }
    if (layer == 0) rows_ += rows;
  }

  std::shared_ptr<const QueryWeights> Mean() const {
    auto w = std::make_shared<QueryWeights>();
    for (const std::vector<double>& s : sums_) {
      std::vector<float>& out = w->layers.emplace_back(s.size());
      for (size_t i = 0; i < s.size(); ++i) out[i] = static_cast<float>(s[i] / rows_);
    }
    return w;
  }

 private:
  const ModelConfig& c_;
  std::vector<std::vector<double>> sums_;
  int64_t rows_ = 0;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const QueryWeights>> MeasureQueryWeights(const Model& model,
                                                                        const Tokenizer& tokenizer,
                                                                        int threads) {
  auto ids = QualityProbeIds(tokenizer, model.config());
  if (!ids.ok()) return ids.status();
  EngineOptions eo;
  eo.kv_type = KvType::kF32;
  eo.max_step_rows = static_cast<int>(ids->size());
  eo.kv_pool_bytes = int64_t(ids->size() + 2 * eo.block_tokens) * model.config().KvBytesPerToken();
  auto engine = Engine::Create(model, MakeCpuBackend(threads), eo);
  if (!engine.ok()) return engine.status();
  auto seq = (*engine)->AddSequence();
  if (!seq.ok()) return seq.status();
  QuerySquares squares(model.config());
  const StepInput input{*seq, *ids, false};
  absl::Status s = (*engine)->Step({&input, 1}, nullptr, &squares);
  if (!s.ok()) return s;
  return squares.Mean();
}

absl::StatusOr<std::shared_ptr<const QueryWeights>> QueryWeightsOf(const Model& model) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* measured ABSL_GUARDED_BY(mu) =
      new std::map<std::string, std::shared_ptr<const QueryWeights>>();
  absl::MutexLock lock(&mu);
  if (auto it = measured->find(model.fingerprint()); it != measured->end()) return it->second;
  auto tokenizer = LoadTokenizerForModel(model, "");
  if (!tokenizer.ok()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "kv type int4a measures the model's query weights on the quality probe's text, which "
        "needs the model's tokenizer: %s",
        tokenizer.status().message()));
  }
  auto weights = MeasureQueryWeights(model, **tokenizer, /*threads=*/2);
  if (!weights.ok()) return weights.status();
  measured->emplace(model.fingerprint(), *weights);
  return *weights;
}

}  // namespace kvshare
