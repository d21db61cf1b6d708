// The CUDA plugin's ABI number (kernels/cuda/plugin_abi.cmake, issue 24): the loader's number is
// the hash of the interface headers it was built with, any edit of them changes it, and a
// plugin with another number (a stale build) is refused with a message saying so. Runs on any
// machine (no GPU): cmake and a C compiler, which the build needs anyway.
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/device_backend.h"

namespace kvshare {
namespace {

// stdout and stderr of a shell command, and its exit status.
std::string Shell(const std::string& cmd, int* status) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return "popen failed";
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  *status = pclose(p);
  return out;
}

const char* const kHeaders[] = {"kernels/backend.h", "kernels/cuda/cuda_plugin.h",
                                "kernels/kv_type.h", "kernels/tensor.h"};

// The number plugin_abi.cmake computes for these files, or -1.
int AbiOf(const std::string& dir) {
  std::string files;
  for (const char* h : kHeaders) absl::StrAppend(&files, files.empty() ? "" : ";", dir, "/", h);
  int status = 0;
  const std::string out = Shell(absl::StrCat("cmake -DKVSHARE_ABI_FILES='", files, "' -P '",
                                             KVSHARE_SOURCE_DIR, "/kernels/cuda/plugin_abi.cmake'"),
                                &status);
  int value = -1;
  if (status != 0 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(out), &value)) {
    ADD_FAILURE() << "plugin_abi.cmake: status " << status << ": " << out;
    return -1;
  }
  return value;
}

std::string TempDir() {
  char tmpl[] = "/tmp/kvshare_abi_XXXXXX";
  const char* d = mkdtemp(tmpl);
  return d != nullptr ? d : "";
}

TEST(PluginAbiTest, TheLoadersNumberIsTheHashOfTheInterfaceHeaders) {
  EXPECT_EQ(CudaPluginAbi(), AbiOf(KVSHARE_SOURCE_DIR));
  EXPECT_GT(CudaPluginAbi(), 1);  // no longer the hand-kept 1
}

TEST(PluginAbiTest, AnEditOfAnyInterfaceHeaderChangesTheNumber) {
  const int base = AbiOf(KVSHARE_SOURCE_DIR);
  for (const char* edited : kHeaders) {
    const std::string dir = TempDir();
    ASSERT_FALSE(dir.empty());
    int status = 0;
    Shell(absl::StrCat("mkdir -p ", dir, "/kernels/cuda"), &status);
    for (const char* h : kHeaders) {
      std::ifstream in(absl::StrCat(KVSHARE_SOURCE_DIR, "/", h));
      std::stringstream text;
      text << in.rdbuf();
      std::ofstream out(absl::StrCat(dir, "/", h));
      out << text.str() << (h == edited ? "// one more line\n" : "");
    }
    EXPECT_NE(AbiOf(dir), base) << edited;
    Shell(absl::StrCat("rm -rf ", dir), &status);
  }
}

TEST(PluginAbiTest, AStalePluginIsRefusedNamingBothNumbers) {
  const std::string dir = TempDir();
  ASSERT_FALSE(dir.empty());
  const int stale = CudaPluginAbi() + 1;
  {
    // The plugin table's layout (kernels/cuda/cuda_plugin.h) with another ABI number.
    std::ofstream c(dir + "/stale.c");
    c << "struct Plugin { int abi; void* probe; void* create; };\n"
      << "static const struct Plugin p = {" << stale << ", 0, 0};\n"
      << "const struct Plugin* kvshare_cuda_plugin_v1(void) { return &p; }\n";
  }
  int status = 0;
  const std::string cc = Shell(
      absl::StrCat("cc -shared -fPIC -o ", dir, "/libkvshare_cuda.so ", dir, "/stale.c"), &status);
  ASSERT_EQ(status, 0) << cc;
  const auto probe = ProbeCuda(0, dir + "/libkvshare_cuda.so");
  ASSERT_FALSE(probe.ok());
  const std::string msg(probe.status().message());
  EXPECT_NE(msg.find("stale plugin"), std::string::npos) << msg;
  EXPECT_NE(msg.find(absl::StrCat("ABI ", stale)), std::string::npos) << msg;
  EXPECT_NE(msg.find(absl::StrCat("build's ", CudaPluginAbi())), std::string::npos) << msg;
  Shell(absl::StrCat("rm -rf ", dir), &status);
}

}  // namespace
}  // namespace kvshare
