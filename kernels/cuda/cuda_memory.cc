#include "kernels/cuda/cuda_memory.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"

namespace kvshare::cuda {

void Die(const std::string& what) {
  std::fprintf(stderr, "kvshare cuda backend: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    Die(absl::StrFormat("%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e)));
  }
}

ScopedDevice::ScopedDevice(int device) {
  if (cudaGetDevice(&previous_) != cudaSuccess) {
    cudaGetLastError();
    previous_ = -1;
  }
  if (previous_ != device) status_ = cudaSetDevice(device);
}

ScopedDevice::~ScopedDevice() {
  int now = -1;
  if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) {
    cudaSetDevice(previous_);
  }
  cudaGetLastError();  // nothing here is the caller's error
}

DeviceMemory::~DeviceMemory() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::StatusOr<std::unique_ptr<DeviceMemory>> DeviceAlloc(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return absl::ResourceExhaustedError(
        absl::StrFormat("cuda backend: cannot allocate %u bytes for %s (%s); %u of %u bytes free",
                        bytes, what, cudaGetErrorString(e), free_b, total_b));
  }
  return std::make_unique<DeviceMemory>(p);
}

absl::Status Scratch::Reserve(size_t bytes, cudaStream_t stream, const char* what) {
  if (bytes <= capacity_) return absl::OkStatus();
  Check(cudaStreamSynchronize(stream), what);
  mem_.reset();
  capacity_ = 0;
  auto m = DeviceAlloc(bytes, what);
  if (!m.ok()) return m.status();
  mem_ = std::move(*m);
  capacity_ = bytes;
  return absl::OkStatus();
}

void* Scratch::Ensure(size_t bytes, cudaStream_t stream, const char* what) {
  if (bytes > capacity_) {
    const absl::Status s = Reserve(std::max(bytes, capacity_ * 3 / 2), stream, what);
    if (!s.ok()) Die(std::string(s.message()));
  }
  return mem_ ? mem_->get() : nullptr;
}

Uploader::~Uploader() {
  for (Stage& s : ring_) {
    if (s.done != nullptr) {
      cudaEventSynchronize(s.done);
      cudaEventDestroy(s.done);
    }
    if (s.host != nullptr) cudaFreeHost(s.host);
  }
}

absl::Status Uploader::Reserve(size_t bytes, cudaStream_t stream, const char* what) {
  return device_.Reserve(bytes, stream, what);
}

const void* Uploader::Upload(const void* host, size_t bytes, cudaStream_t stream,
                             const char* what) {
  if (bytes == 0) return nullptr;
  if (bytes == shadow_.size() && std::memcmp(host, shadow_.data(), bytes) == 0) {
    return device_.Ensure(bytes, stream, what);
  }
  void* dst = device_.Ensure(bytes, stream, what);
  Stage& s = ring_[next_];
  next_ = (next_ + 1) % kRing;
  if (s.done == nullptr) {
    Check(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming), what);
  } else {
    Check(cudaEventSynchronize(s.done), what);  // the copy that last read this stage is done
  }
  if (s.capacity < bytes) {
    if (s.host != nullptr) Check(cudaFreeHost(s.host), what);
    s.host = nullptr;
    s.capacity = 0;
    const size_t want = std::max<size_t>(bytes, 4096);
    Check(cudaMallocHost(&s.host, want), what);
    s.capacity = want;
  }
  std::memcpy(s.host, host, bytes);
  Check(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream), what);
  Check(cudaEventRecord(s.done, stream), what);
  const auto* b = static_cast<const uint8_t*>(host);
  shadow_.assign(b, b + bytes);
  return dst;
}

}  // namespace kvshare::cuda
