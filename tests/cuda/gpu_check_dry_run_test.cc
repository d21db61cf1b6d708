// scripts/gpu-check.sh dry-run, here without a GPU (issue 24): the budget table fits one run
// call, the run fails (never passes, never skips) when no device is usable, every step writes
// its summary line, and a step over its budget is killed on time. The dry run uses the test
// binaries of this build folder (the one this test binary lives in).
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace kvshare {
namespace {

// The build folder: this binary is <build>/tests/gpu_check_dry_run_test.
std::string BuildDir() {
  std::array<char, 4096> buf{};
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  std::string exe(buf.data(), n > 0 ? n : 0);
  for (int i = 0; i < 2 && !exe.empty(); ++i) exe = exe.substr(0, exe.rfind('/'));
  return exe;
}

TEST(GpuCheckDryRunTest, TheRunFailsWithoutADeviceAndKeepsItsBudget) {
  const std::string cmd = "GPU_CHECK_BUILD_DIR='" + BuildDir() +
                          "' bash '" KVSHARE_SOURCE_DIR "/scripts/gpu-check.sh' dry-run 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  std::array<char, 4096> chunk;
  size_t got;
  while ((got = fread(chunk.data(), 1, chunk.size(), p)) > 0) out.append(chunk.data(), got);
  const int status = pclose(p);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("dry-run: OK"), std::string::npos) << out;
  // The test steps ran and failed for want of a device (KVSHARE_REQUIRE_CUDA=1).
  EXPECT_NE(out.find("cuda_ops_test"), std::string::npos) << out;
  EXPECT_NE(out.find("VERDICT: FAIL"), std::string::npos) << out;
}

}  // namespace
}  // namespace kvshare
