#include "service_runtime/build_info.h"

#include "absl/strings/str_format.h"

#ifndef KVSHARE_VERSION
#define KVSHARE_VERSION "unknown"
#endif
#ifndef KVSHARE_GIT_COMMIT
#define KVSHARE_GIT_COMMIT "unknown"
#endif

namespace kvshare::runtime {

const char* ProjectVersion() { return KVSHARE_VERSION; }
const char* GitCommit() { return KVSHARE_GIT_COMMIT; }

std::string VersionLine(const std::string& program) {
  return absl::StrFormat("%s %s (commit %s)", program, ProjectVersion(), GitCommit());
}

}  // namespace kvshare::runtime
