// Choosing the backend at run time: the CPU backend, or the CUDA backend from its plugin
// (libkvshare_cuda.so, loaded with dlopen), so every binary starts on a machine without a GPU,
// a driver or even the plugin, and says which device it runs on and why.
//
//   device "cpu"     the CPU backend.
//   device "cuda"    CUDA device 0 ("cuda:N": device N); when it cannot be used the status is
//                    FAILED_PRECONDITION naming why (plugin not built or not loadable, no
//                    driver, no device, ordinal out of range).
//   device "auto"    CUDA device 0 when usable, else the CPU; `note` says which and why.
//
// Where the plugin is looked for, in order: options.plugin_path; $KVSHARE_CUDA_PLUGIN; the
// build tree it was built in; the running executable's directory; the dynamic loader's search
// path (LD_LIBRARY_PATH). It is loaded once per process and never unloaded.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace kvshare {

struct DeviceInfo {
  std::string kind;  // "cpu" or "cuda"
  std::string name;  // the GPU's name, or the CPU backend's description
  int ordinal = 0;
  int compute_major = 0, compute_minor = 0;
  int64_t total_memory_bytes = 0;  // device memory (the CPU: physical memory)
  int64_t free_memory_bytes = 0;   // when probed
  double peak_bandwidth_gbs = 0;   // theoretical DRAM bandwidth; 0 when unknown
  // One line for logs: "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79.1 of 79.6 GiB free)".
  std::string Describe() const;
};

struct DeviceOptions {
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  CpuBackendOptions cpu;        // for the CPU backend
  bool cuda_bf16 = false;       // CUDA weights as bf16 instead of fp16
  std::string plugin_path;      // empty: the search order above
};

struct DeviceBackend {
  std::unique_ptr<Backend> backend;
  DeviceInfo info;
  std::string note;  // why this device, e.g. "auto: CUDA unavailable (...); using the CPU"
};

absl::StatusOr<DeviceBackend> MakeBackend(const DeviceOptions& options);

// The plugin ABI number this build's loader accepts (kernels/cuda/cuda_plugin.h): derived from
// the interface headers at build time, so a plugin built from other headers is refused.
int CudaPluginAbi();

// CUDA device `ordinal`'s info, or FAILED_PRECONDITION with the reason it cannot be used.
absl::StatusOr<DeviceInfo> ProbeCuda(int ordinal = 0, const std::string& plugin_path = "");

}  // namespace kvshare
