#include "search_service/server/registry_wire.h"

#include "absl/strings/str_format.h"
#include "proto/wire/strategy_wire.h"

namespace kvshare {

void ToProto(const StrategyRecord& record, v1::StrategyRecord* out) {
  out->set_model_fingerprint(record.model_fingerprint);
  out->set_model_name(record.model_name);
  out->set_version(record.version);
  if (record.strategy != nullptr) ToProto(*record.strategy, out->mutable_strategy());
  ToTimestamp(record.publish_time, out->mutable_publish_time());
  out->set_source_job_id(record.source_job_id);
  out->set_deprecated(record.deprecated);
  if (record.deprecated) {
    out->set_deprecation_reason(record.deprecation_reason);
    ToTimestamp(record.deprecate_time, out->mutable_deprecate_time());
  }
}

absl::StatusOr<StrategyRecord> FromProto(const v1::StrategyRecord& msg,
                                         const ProjectionsResolver& resolve) {
  if (!msg.has_strategy()) return absl::InvalidArgumentError("record.strategy is missing");
  auto strategy = FromProto(msg.strategy(), resolve);
  if (!strategy.ok()) {
    // A resolver's own code (e.g. UNAVAILABLE, NOT_FOUND) is kept; a bad message is invalid.
    const absl::StatusCode code = msg.strategy().has_output_projections()
                                      ? strategy.status().code()
                                      : absl::StatusCode::kInvalidArgument;
    return absl::Status(code, absl::StrFormat("record.strategy: %s", strategy.status().message()));
  }
  if (strategy->model_fingerprint() != msg.model_fingerprint()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "record.strategy.model_fingerprint %s differs from record.model_fingerprint %s",
        strategy->model_fingerprint().substr(0, 16), msg.model_fingerprint().substr(0, 16)));
  }
  StrategyRecord r;
  r.model_fingerprint = msg.model_fingerprint();
  r.model_name = msg.model_name();
  r.version = msg.version();
  r.strategy = std::make_shared<const SharingStrategy>(std::move(*strategy));
  r.publish_time = FromTimestamp(msg.publish_time());
  r.source_job_id = msg.source_job_id();
  r.deprecated = msg.deprecated();
  r.deprecation_reason = msg.deprecation_reason();
  r.deprecate_time = FromTimestamp(msg.deprecate_time());
  return r;
}

}  // namespace kvshare
