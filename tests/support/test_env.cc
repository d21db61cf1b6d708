#include "tests/support/test_env.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "service_runtime/locate.h"

namespace kvshare::testing {

std::string Asset(const std::string& file) {
  auto path = AssetPath(file);
  if (!path.ok()) {
    ADD_FAILURE() << path.status();
    return "";
  }
  return *path;
}

std::string SmolLm2Path() {
  auto path = SmolLm2GgufPath();
  if (!path.ok()) {
    ADD_FAILURE() << path.status();
    return "";
  }
  return *path;
}

std::string SourcePath(const std::string& relative) {
  return std::string(KVSHARE_SOURCE_DIR) + "/" + relative;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return "";
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace kvshare::testing
