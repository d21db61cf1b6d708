// The C boundary between the CUDA plugin (libkvshare_cuda.so) and the loader
// (kernels/device_backend.cc). The plugin is dlopen'ed at run time so that no kvshare binary
// links the CUDA runtime or cuBLAS and every binary starts on a machine without a GPU or driver.
//
// The plugin exports exactly one symbol, KVSHARE_CUDA_PLUGIN_SYMBOL, a function returning a table
// of entry points. `create_backend` returns a kvshare::Backend allocated by the plugin, so the
// loader and the plugin must be built from the same tree by the same compiler; `abi_version`
// guards against a stale plugin from another build: it is KVSHARE_CUDA_PLUGIN_ABI, a hash of
// this header, kernels/backend.h, kernels/kv_type.h and kernels/tensor.h computed by CMake
// (kernels/cuda/plugin_abi.cmake) and passed to both the loader and the plugin. The plugin is never
// unloaded (objects it created may outlive any scope the loader can see).
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef KVSHARE_CUDA_PLUGIN_ABI
#error "KVSHARE_CUDA_PLUGIN_ABI comes from the build (kernels/cuda/plugin_abi.cmake)"
#endif
#define KVSHARE_CUDA_PLUGIN_FILE "libkvshare_cuda.so"

extern "C" {

struct KvshareCudaDeviceInfo {
  char name[256];
  int ordinal;
  int compute_major, compute_minor;
  int multiprocessors;
  int driver_version;   // e.g. 13000
  int runtime_version;  // the runtime the plugin was built with
  int64_t total_bytes;
  int64_t free_bytes;
  // Theoretical DRAM bandwidth from the memory clock and bus width; 0 when the driver does
  // not say.
  double peak_bandwidth_gbs;
};

struct KvshareCudaBackendOptions {
  int device;        // CUDA ordinal
  int weights_bf16;  // 0: weights stored as fp16 on the device, 1: bf16
};

struct KvshareCudaPlugin {
  int abi_version;  // KVSHARE_CUDA_PLUGIN_ABI
  // 0 when `device` exists and can be used; else non-zero and a reason in err (no driver,
  // no device, ordinal out of range ...).
  int (*probe)(int device, KvshareCudaDeviceInfo* info, char* err, size_t err_len);
  // A new kvshare::Backend* (as void*), or null with the reason in err.
  void* (*create_backend)(const KvshareCudaBackendOptions* options, char* err, size_t err_len);
};

typedef const KvshareCudaPlugin* (*KvshareCudaPluginFn)();
#define KVSHARE_CUDA_PLUGIN_SYMBOL "kvshare_cuda_plugin_v1"

}  // extern "C"
