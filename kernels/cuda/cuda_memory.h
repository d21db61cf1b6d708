// Device memory and host-to-device uploads for the CUDA backend (cuda_backend.cc), and the
// guard that keeps the calling thread's current device as it was.
//
// Errors: an allocation failure is RESOURCE_EXHAUSTED from DeviceAlloc; where the backend's
// void ops have no status channel (Scratch growth, uploads), a CUDA error means a bug or a dead
// device and stops the process with the error and what was being done (Check, Die).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvshare::cuda {

[[noreturn]] void Die(const std::string& what);
// Die()s with the CUDA error and `what` unless e is cudaSuccess.
void Check(cudaError_t e, const char* what);

// Makes `device` current for the calling thread while in scope, then restores the device that
// was current before (Probe and Init run on the caller's thread, which may be driving another
// device's backend: leaving it switched would send that backend's next allocations here).
class ScopedDevice {
 public:
  explicit ScopedDevice(int device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  // The cudaSetDevice result (cudaSuccess when the device was already current).
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

class DeviceMemory {
 public:
  explicit DeviceMemory(void* ptr) : ptr_(ptr) {}
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_;
};

// cudaMalloc of `bytes` (at least 1) on the current device; RESOURCE_EXHAUSTED naming `what`,
// the size and the free memory when it fails.
absl::StatusOr<std::unique_ptr<DeviceMemory>> DeviceAlloc(size_t bytes, const char* what);

// Scratch device memory that grows on demand (growth waits for the stream: queued kernels may
// still read the old block). Reserve() allocates up front, so the memory is taken before the
// engine sizes the KV pool from what is free.
class Scratch {
 public:
  void* Ensure(size_t bytes, cudaStream_t stream, const char* what);
  // As Ensure, but an allocation failure is returned instead of fatal.
  absl::Status Reserve(size_t bytes, cudaStream_t stream, const char* what);
  size_t capacity() const { return capacity_; }

 private:
  std::unique_ptr<DeviceMemory> mem_;
  size_t capacity_ = 0;
};

// A device copy of a small host array, re-sent only when its bytes change. The bytes go
// through a ring of pinned host buffers, so the copy is truly asynchronous (a pageable source
// would make every upload wait for the whole stream) and the caller's array may change as soon
// as Upload returns. The device copy is read by kernels queued after it on the same stream.
class Uploader {
 public:
  Uploader() = default;
  ~Uploader();
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  const void* Upload(const void* host, size_t bytes, cudaStream_t stream, const char* what);
  absl::Status Reserve(size_t bytes, cudaStream_t stream, const char* what);

 private:
  static constexpr int kRing = 8;
  struct Stage {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;  // recorded after the copy out of `host`
  };
  Scratch device_;
  Stage ring_[kRing];
  int next_ = 0;
  std::vector<uint8_t> shadow_;
};

}  // namespace kvshare::cuda
