// The CUDA backend (kernels/backend.h) and the plugin's one exported entry point.
//
// Memory: every Buffer is cudaMalloc'ed device memory; the KV pool is fp32 or f16 (the KvTypes this
// backend implements so far; SupportsKvType refuses int8 and int4).
// Weights are dequantized at Prepare to fp16 (or bf16) on the device; GEMMs go through
// cublasGemmEx with fp16/bf16 inputs and fp32 accumulation and output, so activations are
// rounded to the weights' type just before each GEMM (the only place they leave fp32).
//
// Streams: every op is queued on one stream, so ops are ordered as the engine calls them; the
// host sees results only through CopyToHost, which waits for the stream. Host-side arrays an
// op takes (token ids, positions, block tables) are copied to the device before the op
// returns; the copy is skipped when the bytes equal the last ones uploaded to that slot (the
// positions and block tables are the same for every layer of a step).
//
// Errors: allocation failures come back as RESOURCE_EXHAUSTED. A failing kernel launch or
// device fault has no status channel in the void ops of the interface and means a bug or a
// dead device: the process stops with the CUDA error, the op and the shape.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_plugin.h"

namespace kvshare::cuda {
namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kvshare cuda backend: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    Die(absl::StrFormat("%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e)));
  }
}

void CheckBlas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    Die(absl::StrFormat("%s: cuBLAS status %d (%s)", what, static_cast<int>(s),
                        cublasGetStatusString(s)));
  }
}

// Elements per block and bytes per block of a GGML type (kernels/tensor.h); {0, 0} if unknown.
std::pair<int, int> BlockLayout(DType t) {
  switch (t) {
    case DType::kF32:
      return {1, 4};
    case DType::kF16:
      return {1, 2};
    case DType::kBF16:
      return {1, 2};
    case DType::kQ8_0:
      return {32, 34};
    case DType::kQ4_0:
      return {32, 18};
    case DType::kQ4_1:
      return {32, 20};
    case DType::kQ5_0:
      return {32, 22};
    case DType::kQ5_1:
      return {32, 24};
    case DType::kQ3_K:
      return {256, 110};
    case DType::kQ4_K:
      return {256, 144};
    case DType::kQ5_K:
      return {256, 176};
    case DType::kQ6_K:
      return {256, 210};
  }
  return {0, 0};
}

class DeviceMemory {
 public:
  explicit DeviceMemory(void* ptr) : ptr_(ptr) {}
  ~DeviceMemory() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_;
};

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

class CudaBuffer : public Buffer {
 public:
  CudaBuffer(std::unique_ptr<DeviceMemory> mem, size_t size) : mem_(std::move(mem)), size_(size) {}
  void* data() override { return mem_->get(); }
  size_t size() const override { return size_; }

 private:
  std::unique_ptr<DeviceMemory> mem_;
  size_t size_;
};

// A weight on the device as fp16/bf16 [rows][cols]. tensor() keeps the source's name, type
// and shape; its data pointer is not read after Prepare.
class CudaWeight : public PreparedWeight {
 public:
  CudaWeight(const Tensor& t, std::shared_ptr<DeviceMemory> mem)
      : tensor_(t), mem_(std::move(mem)) {}
  const Tensor& tensor() const override { return tensor_; }
  const void* data() const { return mem_->get(); }
  int64_t rows() const { return tensor_.rows(); }
  int64_t cols() const { return tensor_.cols(); }

 private:
  Tensor tensor_;
  std::shared_ptr<DeviceMemory> mem_;
};

// Scratch device memory that grows on demand (growth waits for the stream: queued kernels may
// still read the old block).
class Scratch {
 public:
  void* Ensure(size_t bytes, cudaStream_t stream, const char* what) {
    if (bytes <= capacity_) return mem_ ? mem_->get() : nullptr;
    Check(cudaStreamSynchronize(stream), what);
    mem_.reset();
    size_t want = std::max(bytes, capacity_ * 3 / 2);
    auto m = DeviceAlloc(want, what);
    if (!m.ok()) Die(std::string(m.status().message()));
    mem_ = std::move(*m);
    capacity_ = want;
    return mem_->get();
  }

 private:
  std::unique_ptr<DeviceMemory> mem_;
  size_t capacity_ = 0;
};

// A device copy of a small host int array, re-uploaded only when the bytes change.
class IntSlot {
 public:
  const int32_t* Upload(const int32_t* host, size_t count, cudaStream_t stream, const char* what) {
    if (count == 0) return nullptr;
    if (count == shadow_.size() && std::memcmp(host, shadow_.data(), count * 4) == 0) {
      return static_cast<const int32_t*>(mem_.Ensure(count * 4, stream, what));
    }
    void* dst = mem_.Ensure(count * 4, stream, what);
    // A pageable source: the call returns once the bytes are staged, so `host` may change after.
    Check(cudaMemcpyAsync(dst, host, count * 4, cudaMemcpyHostToDevice, stream), what);
    shadow_.assign(host, host + count);
    return static_cast<const int32_t*>(dst);
  }

 private:
  Scratch mem_;
  std::vector<int32_t> shadow_;
};

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const KvshareCudaBackendOptions& o) {
    std::unique_ptr<CudaBackend> b(new CudaBackend(o));
    absl::Status s = b->Init();
    if (!s.ok()) return s;
    return b;
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name() const override {
    return absl::StrFormat("cuda (%s, sm_%d%d, %s weights)", device_name_, cc_major_, cc_minor_,
                           bf16_ ? "bf16" : "fp16");
  }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    Bind();
    auto m = DeviceAlloc(bytes, "a buffer");
    if (!m.ok()) return m.status();
    return std::unique_ptr<Buffer>(new CudaBuffer(std::move(*m), bytes));
  }

  void CopyToHost(const void* src, size_t bytes, void* dst_host) override {
    Bind();
    Check(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, stream_), "CopyToHost");
    Check(cudaStreamSynchronize(stream_), "CopyToHost (the ops queued before it)");
  }
  void CopyFromHost(const void* src_host, size_t bytes, void* dst) override {
    Bind();
    Check(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, stream_), "CopyFromHost");
    Check(cudaStreamSynchronize(stream_), "CopyFromHost");
  }
  void Copy(const void* src, size_t bytes, void* dst) override {
    Bind();
    if (bytes == 0) return;
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "Copy");
  }
  int64_t FreeMemoryBytes() override {
    Bind();
    size_t free_b = 0, total_b = 0;
    Check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    return static_cast<int64_t>(free_b);
  }

  absl::StatusOr<std::unique_ptr<PreparedWeight>> Prepare(const Tensor& w) override {
    Bind();
    const auto [block_elems, block_bytes] = BlockLayout(w.type);
    if (block_elems == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cuda backend: tensor %s has type id %d, not one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
          "Q5_0, Q5_1, Q3_K, Q4_K, Q5_K, Q6_K",
          w.name, static_cast<int>(w.type)));
    }
    const int64_t n = w.elements();
    if (w.shape.empty() || n <= 0 || w.cols() % block_elems != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cuda backend: tensor %s has %d columns, not a positive multiple of its block size %d",
          w.name, w.cols(), block_elems));
    }
    const size_t src_bytes = static_cast<size_t>(n / block_elems) * block_bytes;
    if (w.data == nullptr || w.nbytes < src_bytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cuda backend: tensor %s holds %u bytes, its shape needs %u", w.name,
                          w.nbytes, src_bytes));
    }
    // A tied output matrix is the embedding's very bytes: upload it once.
    const auto key = std::make_tuple(w.data, static_cast<uint32_t>(w.type), n);
    if (auto it = uploaded_.find(key); it != uploaded_.end()) {
      if (auto mem = it->second.lock())
        return std::unique_ptr<PreparedWeight>(new CudaWeight(w, mem));
    }
    auto dst = DeviceAlloc(static_cast<size_t>(n) * 2, "weights");
    if (!dst.ok())
      return absl::Status(dst.status().code(),
                          absl::StrCat(dst.status().message(), " (tensor ", w.name, ")"));
    auto src = DeviceAlloc(src_bytes, "a weight upload");
    if (!src.ok()) return src.status();
    Check(cudaMemcpyAsync((*src)->get(), w.data, src_bytes, cudaMemcpyHostToDevice, stream_),
          "Prepare upload");
    LaunchDequantize(static_cast<uint32_t>(w.type), (*src)->get(), n, bf16_, (*dst)->get(),
                     stream_);
    Check(cudaGetLastError(), "Prepare dequantize");
    Check(cudaStreamSynchronize(stream_), "Prepare");  // before the staging copy is freed
    std::shared_ptr<DeviceMemory> mem(std::move(*dst));
    uploaded_[key] = mem;
    return std::unique_ptr<PreparedWeight>(new CudaWeight(w, mem));
  }

  void MatMul(const PreparedWeight& pw, const float* x, int n, float* out) override {
    Bind();
    if (n <= 0) return;
    const auto& w = static_cast<const CudaWeight&>(pw);
    const int64_t rows = w.rows(), cols = w.cols();
    void* xh = act_.Ensure(static_cast<size_t>(n) * cols * 2, stream_, "MatMul activations");
    LaunchToHalf(x, static_cast<int64_t>(n) * cols, bf16_, xh, stream_);
    Check(cudaGetLastError(), "MatMul convert");
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t t = bf16_ ? CUDA_R_16BF : CUDA_R_16F;
    // Column-major view: out^T[rows][n] = (W as [cols][rows])^T * (x as [cols][n]).
    CheckBlas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), n,
                           static_cast<int>(cols), &one, w.data(), t, static_cast<int>(cols), xh, t,
                           static_cast<int>(cols), &zero, out, CUDA_R_32F, static_cast<int>(rows),
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "MatMul cublasGemmEx");
  }

  void Embed(const PreparedWeight& table, const int32_t* ids, int n, float* out) override {
    Bind();
    if (n <= 0) return;
    const auto& t = static_cast<const CudaWeight&>(table);
    const int32_t* d_ids = ids_.Upload(ids, n, stream_, "Embed ids");
    LaunchEmbed(t.data(), bf16_, d_ids, n, static_cast<int>(t.cols()), out, stream_);
    Check(cudaGetLastError(), "Embed");
  }

  void RmsNorm(const float* x, const float* weight, int n, int dim, float eps,
               float* out) override {
    Bind();
    LaunchRmsNorm(x, weight, n, dim, eps, out, stream_);
    Check(cudaGetLastError(), "RmsNorm");
  }

  void Rope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, float theta) override {
    Bind();
    if (n <= 0) return;
    const int32_t* d_pos = positions_.Upload(pos, n, stream_, "Rope positions");
    LaunchRope(x, d_pos, n, n_heads, head_dim, theta, stream_);
    Check(cudaGetLastError(), "Rope");
  }

  void SiluMul(const float* gate, const float* up, int64_t count, float* out) override {
    Bind();
    LaunchSiluMul(gate, up, count, out, stream_);
    Check(cudaGetLastError(), "SiluMul");
  }

  void Add(float* x, const float* y, int64_t count) override {
    Bind();
    LaunchAdd(x, y, count, stream_);
    Check(cudaGetLastError(), "Add");
  }

  // f32 and f16 pools so far (int8 and int4 only on the CPU); the engine asks SupportsKvType
  // first, so another type reaching WriteKv or Attention is a bug.
  absl::Status SupportsKvType(KvType type) const override {
    if (type == KvType::kF32 || type == KvType::kF16) return absl::OkStatus();
    return absl::UnimplementedError(absl::StrFormat(
        "cuda backend: kv type %s is not implemented (f32 and f16 are); use --kv-type f16 or "
        "--device cpu",
        KvTypeName(type)));
  }

  void WriteKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
               const float* k, const float* v, void* /*tail*/) override {
    Bind();
    if (!SupportsKvType(g.type).ok()) Die(std::string(SupportsKvType(g.type).message()));
    if (n <= 0) return;
    const int blocks = (start_pos + n + g.block_tokens - 1) / g.block_tokens;
    const int32_t* d_table = write_table_.Upload(block_table, blocks, stream_, "WriteKv table");
    LaunchWriteKv(g.block_tokens, g.n_kv_heads * g.head_dim, g.type == KvType::kF16, pool, d_table,
                  start_pos, n, k, v, stream_);
    Check(cudaGetLastError(), "WriteKv");
  }

  void Attention(const KvGeometry& g, const void* pool, const AttentionSeq* seqs, int n_seqs,
                 const float* q, int n_heads, float* out) override {
    Bind();
    if (!SupportsKvType(g.type).ok()) Die(std::string(SupportsKvType(g.type).message()));
    if (g.head_dim > kMaxHeadDim || g.head_dim < 1 || g.n_kv_heads < 1 ||
        n_heads % g.n_kv_heads != 0) {
      Die(
          absl::StrFormat("Attention: head_dim %d (limit %d), n_heads %d, n_kv_heads %d not "
                          "supported (n_heads must be a multiple of n_kv_heads)",
                          g.head_dim, kMaxHeadDim, n_heads, g.n_kv_heads));
    }
    items_host_.clear();
    tables_host_.clear();
    int max_len = 0;
    for (int s = 0; s < n_seqs; ++s) {
      const AttentionSeq& a = seqs[s];
      if (a.n_q <= 0) continue;
      const int len = a.start_pos + a.n_q;
      const int blocks = std::min(a.n_blocks, (len + g.block_tokens - 1) / g.block_tokens);
      const int offset = static_cast<int>(tables_host_.size());
      tables_host_.insert(tables_host_.end(), a.block_table, a.block_table + blocks);
      for (int j = 0; j < a.n_q; ++j) {
        items_host_.push_back(AttentionItem{a.q_row + j, a.start_pos + j, offset, 0});
      }
      max_len = std::max(max_len, len);
    }
    const int n_items = static_cast<int>(items_host_.size());
    if (n_items == 0) return;
    const AttentionShape shape{g.block_tokens, g.n_kv_heads, n_heads, g.head_dim, max_len};
    int split_tokens = 0;
    const int splits = AttentionSplits(shape, n_items, multiprocessors_, &split_tokens);
    const int32_t* d_tables =
        tables_.Upload(tables_host_.data(), tables_host_.size(), stream_, "Attention tables");
    const auto* d_items = reinterpret_cast<const AttentionItem*>(
        items_.Upload(reinterpret_cast<const int32_t*>(items_host_.data()), items_host_.size() * 4,
                      stream_, "Attention rows"));
    const int64_t scratch_floats = AttentionScratchFloats(shape, n_items, splits);
    float* scratch = scratch_floats > 0 ? static_cast<float*>(att_scratch_.Ensure(
                                              scratch_floats * 4, stream_, "Attention scratch"))
                                        : nullptr;
    LaunchAttention(shape, g.type == KvType::kF16, pool, d_tables, d_items, n_items, splits,
                    split_tokens, q, scratch, out, stream_);
    Check(cudaGetLastError(), "Attention");
  }

 private:
  // The current device is per host thread: the engine may run on another thread than the one
  // that created the backend.
  void Bind() {
    thread_local int bound = -1;
    if (bound != device_) {
      Check(cudaSetDevice(device_), "cudaSetDevice");
      bound = device_;
    }
  }

  explicit CudaBackend(const KvshareCudaBackendOptions& o)
      : device_(o.device), bf16_(o.weights_bf16 != 0) {}

  absl::Status Init() {
    cudaError_t e = cudaSetDevice(device_);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      return absl::UnavailableError(
          absl::StrFormat("cuda backend: device %d: %s", device_, cudaGetErrorString(e)));
    }
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, device_);
    device_name_ = prop.name;
    cc_major_ = prop.major;
    cc_minor_ = prop.minor;
    multiprocessors_ = prop.multiProcessorCount;
    const cublasStatus_t s = cublasCreate(&blas_);
    if (s != CUBLAS_STATUS_SUCCESS) {
      blas_ = nullptr;
      return absl::UnavailableError(
          absl::StrFormat("cuda backend: cublasCreate: %s", cublasGetStatusString(s)));
    }
    cublasSetStream(blas_, stream_);
    return absl::OkStatus();
  }

  const int device_;
  const bool bf16_;
  std::string device_name_;
  int cc_major_ = 0, cc_minor_ = 0, multiprocessors_ = 1;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::map<std::tuple<const void*, uint32_t, int64_t>, std::weak_ptr<DeviceMemory>> uploaded_;
  Scratch act_, att_scratch_;
  IntSlot ids_, positions_, write_table_, tables_, items_;
  std::vector<AttentionItem> items_host_;
  std::vector<int32_t> tables_host_;
};

void CopyReason(const std::string& reason, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::snprintf(err, err_len, "%s", reason.c_str());
}

int Probe(int device, KvshareCudaDeviceInfo* info, char* err, size_t err_len) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e != cudaSuccess) {
    int driver = 0;
    cudaDriverGetVersion(&driver);
    const char* what = e == cudaErrorInsufficientDriver
                           ? (driver == 0 ? "no NVIDIA driver (libcuda.so.1) found"
                                          : "the NVIDIA driver is older than the CUDA runtime")
                       : e == cudaErrorNoDevice ? "the driver sees no CUDA device"
                                                : "the CUDA runtime cannot start";
    CopyReason(absl::StrFormat("%s (%s: %s)", what, cudaGetErrorName(e), cudaGetErrorString(e)),
               err, err_len);
    return 1;
  }
  if (count == 0) {
    CopyReason("the driver sees no CUDA device", err, err_len);
    return 1;
  }
  if (device < 0 || device >= count) {
    CopyReason(absl::StrFormat("CUDA device %d does not exist (%d device%s: 0..%d)", device, count,
                               count == 1 ? "" : "s", count - 1),
               err, err_len);
    return 1;
  }
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, device);
  if (e == cudaSuccess) e = cudaSetDevice(device);
  size_t free_b = 0, total_b = 0;
  if (e == cudaSuccess) e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) {
    CopyReason(absl::StrFormat("CUDA device %d: %s", device, cudaGetErrorString(e)), err, err_len);
    return 1;
  }
  if (prop.major < 7 || (prop.major == 7 && prop.minor < 5)) {
    CopyReason(absl::StrFormat("CUDA device %d (%s) is sm_%d%d; the plugin needs sm_75 or newer",
                               device, prop.name, prop.major, prop.minor),
               err, err_len);
    return 1;
  }
  if (info != nullptr) {
    std::memset(info, 0, sizeof(*info));
    std::snprintf(info->name, sizeof(info->name), "%s", prop.name);
    info->ordinal = device;
    info->compute_major = prop.major;
    info->compute_minor = prop.minor;
    info->multiprocessors = prop.multiProcessorCount;
    cudaDriverGetVersion(&info->driver_version);
    cudaRuntimeGetVersion(&info->runtime_version);
    info->total_bytes = static_cast<int64_t>(total_b);
    info->free_bytes = static_cast<int64_t>(free_b);
    int clock_khz = 0, bus_bits = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device);
    cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
    cudaGetLastError();  // an attribute the driver lacks is not an error here
    // Double data rate: two transfers per clock.
    info->peak_bandwidth_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  }
  return 0;
}

void* CreateBackend(const KvshareCudaBackendOptions* options, char* err, size_t err_len) {
  if (options == nullptr) {
    CopyReason("no options", err, err_len);
    return nullptr;
  }
  if (Probe(options->device, nullptr, err, err_len) != 0) return nullptr;
  auto b = CudaBackend::Create(*options);
  if (!b.ok()) {
    CopyReason(std::string(b.status().message()), err, err_len);
    return nullptr;
  }
  return static_cast<Backend*>(b->release());
}

const KvshareCudaPlugin kPlugin = {KVSHARE_CUDA_PLUGIN_ABI, &Probe, &CreateBackend};

}  // namespace
}  // namespace kvshare::cuda

extern "C" __attribute__((visibility("default"))) const KvshareCudaPlugin*
kvshare_cuda_plugin_v1() {
  return &kvshare::cuda::kPlugin;
}
