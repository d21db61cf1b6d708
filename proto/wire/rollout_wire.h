// Names of the rollout wire enums, as logs, errors and the CLI print them.
#pragma once

#include "kvshare/v1/registry.pb.h"

namespace kvshare {

// "running", "paused", "completed", "aborted"; "unspecified" for anything else.
const char* RolloutStateName(v1::RolloutState s);

}  // namespace kvshare
