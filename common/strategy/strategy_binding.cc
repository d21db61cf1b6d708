#include "common/strategy/strategy_binding.h"

#include "absl/strings/str_format.h"
#include "common/model/fingerprint.h"

namespace kvshare {
namespace {

bool BoundToV1(const SharingStrategy& strategy, const Model& model) {
  return strategy.model_fingerprint() != model.fingerprint() &&
         strategy.model_fingerprint() == model.fingerprint_v1();
}

}  // namespace

absl::Status ValidateStrategyForModel(const SharingStrategy& strategy, const Model& model) {
  if (BoundToV1(strategy, model)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "strategy %s was bound to fingerprint v1 %s of model '%s' (its weights alone); "
        "fingerprint v%d also covers the tokenizer, and this model's is %s. If the strategy was "
        "made with this tokenizer, re-bind it explicitly: kvshare rebind --strategy FILE "
        "--model %s",
        strategy.id().substr(0, 16), strategy.model_fingerprint().substr(0, 16),
        model.config().name, kModelFingerprintVersion, model.fingerprint().substr(0, 16),
        model.path()));
  }
  return strategy.ValidateFor(model.config(), model.fingerprint());
}

absl::StatusOr<SharingStrategy> RebindStrategy(const SharingStrategy& strategy,
                                               const Model& model) {
  if (strategy.n_layers() != model.config().n_layers) {
    return strategy.ValidateFor(model.config(), model.fingerprint());  // names both counts
  }
  if (strategy.model_fingerprint() == model.fingerprint()) return strategy;
  if (!BoundToV1(strategy, model)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "strategy %s is bound to fingerprint %s, which is neither the v1 (%s) nor the v%d (%s) "
        "fingerprint of model '%s': it was made for another model and cannot be re-bound to "
        "this one",
        strategy.id().substr(0, 16), strategy.model_fingerprint().substr(0, 16),
        model.fingerprint_v1().substr(0, 16), kModelFingerprintVersion,
        model.fingerprint().substr(0, 16), model.config().name));
  }
  absl::StatusOr<SharingStrategy> rebound =
      SharingStrategy::Create(strategy.kv_source(), model.fingerprint());
  if (!rebound.ok()) return rebound.status();
  if (strategy.has_kv_types()) {  // the KV plan is the strategy's, whatever it is bound to
    rebound = rebound->WithKvTypes(strategy.kv_types());
    if (!rebound.ok()) return rebound.status();
  }
  rebound->provenance() = strategy.provenance();
  return rebound;
}

}  // namespace kvshare
