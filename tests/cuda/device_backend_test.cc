// The run-time device choice (kernels/device_backend.h). These run on any machine: without a
// usable GPU "auto" must fall back to the CPU and say why, and "cuda" must fail with the
// reason; with one, "auto" must pick it.
#include "kernels/device_backend.h"

#include <cstdlib>
#include <cstring>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvshare {
namespace {

TEST(DeviceBackendTest, CpuIsAlwaysAvailable) {
  DeviceOptions o;
  o.device = "cpu";
  o.cpu.threads = 1;
  auto b = MakeBackend(o);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->info.kind, "cpu");
  EXPECT_NE(b->backend, nullptr);
  EXPECT_GT(b->info.total_memory_bytes, 0);
  EXPECT_GT(b->backend->FreeMemoryBytes(), 0);
}

TEST(DeviceBackendTest, AutoUsesCudaExactlyWhenCudaIsUsable) {
  const auto probe = ProbeCuda(0);
  DeviceOptions o;
  o.device = "auto";
  o.cpu.threads = 1;
  auto b = MakeBackend(o);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_NE(b->backend, nullptr);
  std::cout << "auto chose " << b->info.Describe() << " -- " << b->note << "\n";
  if (probe.ok()) {
    EXPECT_EQ(b->info.kind, "cuda");
    EXPECT_EQ(b->info.name, probe->name);
  } else {
    EXPECT_EQ(b->info.kind, "cpu");
    // The note carries the reason CUDA was not used.
    EXPECT_NE(b->note.find("CUDA unavailable"), std::string::npos) << b->note;
    EXPECT_NE(b->note.find(std::string(probe.status().message())), std::string::npos) << b->note;
  }
}

TEST(DeviceBackendTest, CudaWithoutADeviceIsAClearError) {
  const auto probe = ProbeCuda(0);
  DeviceOptions o;
  o.device = "cuda";
  auto b = MakeBackend(o);
  if (probe.ok()) {
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->info.kind, "cuda");
    return;
  }
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string msg(b.status().message());
  std::cout << "cuda unavailable: " << msg << "\n";
  EXPECT_NE(msg.find("device \"cuda\" requested but CUDA is unavailable"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find(std::string(probe.status().message())), std::string::npos) << msg;
}

TEST(DeviceBackendTest, AMissingPluginPathIsNamed) {
  auto probe = ProbeCuda(0, "/nonexistent/libkvshare_cuda.so");
  ASSERT_FALSE(probe.ok());
  EXPECT_NE(probe.status().message().find("/nonexistent/libkvshare_cuda.so"), std::string::npos)
      << probe.status();
}

TEST(DeviceBackendTest, AnOrdinalBeyondTheDevicesIsAClearError) {
  DeviceOptions o;
  o.device = "cuda:4096";
  auto b = MakeBackend(o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("cuda:4096"), std::string::npos) << b.status();
}

TEST(DeviceBackendTest, AnUnknownDeviceNamesTheValueAndTheChoices) {
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", ""}) {
    DeviceOptions o;
    o.device = bad;
    auto b = MakeBackend(o);
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(b.status().message().find(absl::StrCat("\"", bad, "\"")), std::string::npos)
        << b.status();
    EXPECT_NE(b.status().message().find("auto, cpu, cuda, cuda:N"), std::string::npos);
  }
}

// scripts/gpu-check.sh sets KVSHARE_REQUIRE_CUDA=1 on the GPU machine: there, CUDA device 0
// must be usable, or this binary (which otherwise passes without a GPU) fails with the reason.
TEST(DeviceBackendTest, CudaIsUsableWhereItIsRequired) {
  const char* required = std::getenv("KVSHARE_REQUIRE_CUDA");
  if (required == nullptr || std::strcmp(required, "1") != 0) {
    GTEST_SKIP() << "KVSHARE_REQUIRE_CUDA is not 1";
  }
  const auto probe = ProbeCuda(0);
  ASSERT_TRUE(probe.ok()) << "KVSHARE_REQUIRE_CUDA=1: " << probe.status();
  std::cout << "cuda: " << probe->Describe() << "\n";
}

#ifdef KVSHARE_EXPECT_CUDA_PLUGIN
// The plugin was built by this tree: loading it must get past dlopen (to the driver check).
TEST(DeviceBackendTest, TheBuiltPluginLoads) {
  const auto probe = ProbeCuda(0);
  if (probe.ok()) return;
  EXPECT_EQ(probe.status().message().find("could not be loaded"), std::string::npos)
      << probe.status();
}
#endif

}  // namespace
}  // namespace kvshare
