// The CUDA backend for tests, or the reason there is none (so each test can GTEST_SKIP with
// it), and helpers to move vectors in and out of backend memory.
//
// KVSHARE_REQUIRE_CUDA=1 in the environment (scripts/gpu-check.sh sets it on the GPU machine)
// turns every such skip into a failure, so a missing driver, device, plugin or cuBLAS there is
// reported as a failure and never as a pass.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/device_backend.h"

namespace kvshare::testing {

// One CUDA backend per test binary (device 0), created on first use.
struct CudaForTests {
  std::unique_ptr<Backend> backend;  // null when CUDA cannot be used
  DeviceInfo info;
  std::string skip_reason;
};

inline CudaForTests& Cuda(bool bf16 = false) {
  static CudaForTests* fp16 = nullptr;
  static CudaForTests* b16 = nullptr;
  CudaForTests*& slot = bf16 ? b16 : fp16;
  if (slot == nullptr) {
    slot = new CudaForTests();
    DeviceOptions o;
    o.device = "cuda";
    o.cuda_bf16 = bf16;
    auto b = MakeBackend(o);
    if (b.ok()) {
      slot->backend = std::move(b->backend);
      slot->info = b->info;
    } else {
      slot->skip_reason = absl::StrCat("no usable CUDA device: ", b.status().message());
    }
  }
  return *slot;
}

// True when KVSHARE_REQUIRE_CUDA is set to 1: a test that would skip for want of CUDA fails.
inline bool CudaRequired() {
  const char* v = std::getenv("KVSHARE_REQUIRE_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// Skips the calling test, printing why, when CUDA cannot be used (fails instead under
// KVSHARE_REQUIRE_CUDA=1).
#define KVSHARE_REQUIRE_CUDA()                                                                \
  do {                                                                                        \
    if (::kvshare::testing::Cuda().backend == nullptr) {                                      \
      if (::kvshare::testing::CudaRequired()) {                                               \
        GTEST_FAIL() << "KVSHARE_REQUIRE_CUDA=1: " << ::kvshare::testing::Cuda().skip_reason; \
      }                                                                                       \
      GTEST_SKIP() << ::kvshare::testing::Cuda().skip_reason;                                 \
    }                                                                                         \
  } while (0)

inline std::unique_ptr<Buffer> ToDevice(Backend& b, const std::vector<float>& v) {
  auto buf = b.Allocate(std::max<size_t>(v.size(), 1) * 4);
  EXPECT_TRUE(buf.ok()) << buf.status();
  if (!v.empty()) b.CopyFromHost(v.data(), v.size() * 4, (*buf)->data());
  return std::move(*buf);
}

inline std::vector<float> ToHost(Backend& b, Buffer& buf, size_t floats) {
  std::vector<float> v(floats);
  if (floats > 0) b.CopyToHost(buf.data(), floats * 4, v.data());
  return v;
}

}  // namespace kvshare::testing
