#include "proto/wire/rollout_wire.h"

namespace kvshare {

const char* RolloutStateName(v1::RolloutState s) {
  switch (s) {
    case v1::ROLLOUT_RUNNING:
      return "running";
    case v1::ROLLOUT_PAUSED:
      return "paused";
    case v1::ROLLOUT_COMPLETED:
      return "completed";
    case v1::ROLLOUT_ABORTED:
      return "aborted";
    default:
      return "unspecified";
  }
}

}  // namespace kvshare
