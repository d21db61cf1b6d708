#include "tests/support/test_env.h"

#include <sys/stat.h>

#include <cstdlib>
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

std::string TestModelsDir() {
  const char* env = std::getenv("KVSHARE_TEST_MODELS");
  if (env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "") + "/.cache/kvshare/models";
}

std::string TestModel(const std::string& file) {
  const std::string path = TestModelsDir() + "/" + file;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return path;
  // scripts/test.sh (CI) makes the files first: there a missing one fails the test that needs
  // it instead of letting it skip.
  const char* require = std::getenv("KVSHARE_REQUIRE_TEST_MODELS");
  if (require != nullptr && std::string(require) == "1") ADD_FAILURE() << TestModelMissing(file);
  return "";
}

std::string TestModelMissing(const std::string& file) {
  return TestModelsDir() + "/" + file +
         " does not exist; make it with: bash tests/reference/make_test_models.sh";
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
