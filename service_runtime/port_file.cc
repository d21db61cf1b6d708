#include "service_runtime/port_file.h"

#include "absl/strings/str_cat.h"
#include "common/util/file.h"

namespace kvshare::runtime {

absl::Status WritePortFile(const std::string& path, int port) {
  return WriteFileAtomically(path, absl::StrCat(port, "\n"));
}

}  // namespace kvshare::runtime
