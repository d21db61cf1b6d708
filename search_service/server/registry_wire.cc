#include "search_service/server/registry_wire.h"

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

}  // namespace kvshare
