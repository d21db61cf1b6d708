// The CUDA backend (kernels/backend.h) and the plugin's one exported entry point.
//
// Memory: every Buffer is cudaMalloc'ed device memory; the KV pool is fp32 or f16 (the KvTypes this
// backend implements so far; SupportsKvType refuses int8 and int4).
// Weights are dequantized at Prepare to fp16 (or bf16) on the device; GEMMs go through
// cublasGemmEx with fp16/bf16 inputs and fp32 accumulation and output, so activations are
// rounded to the weights' type just before each GEMM (the only place they leave fp32).
//
// Weights stored BF16 in the model are kept bf16 on the device and their GEMM inputs rounded to
// bf16 (fp16's range would overflow on models with large activations), whatever the option.
//
// Streams: every op is queued on one stream, so ops are ordered as the engine calls them; the
// host sees results only through CopyToHost, which waits for the stream. Host-side arrays an
// op takes (token ids, positions, block tables) are copied to the device, through pinned
// staging (cuda_memory.h Uploader), before the op returns; the copy is skipped when the bytes
// equal the last ones uploaded to that slot (the positions are the same for every layer).
//
// Batched WriteKv: WriteKv calls are collected, and stored by one upload and one launch for
// all of them when the next op of any other kind arrives (the engine calls WriteKv once per
// sequence per layer, then Attention), or when a buffer is freed or the backend destroyed.
// The k/v rows they name are read at that launch; no op runs in between, so they are
// unchanged. Positions written by one batch must be distinct (each sequence writes its own).
//
// Memory taken at creation, before the engine sizes the KV pool from free memory: the cuBLAS
// workspace, the attention scratch and the upload buffers; the GEMM input scratch grows to
// kReserveRows rows of the widest matrix as weights are prepared. All of it still grows on
// demand beyond that (a failure there stops the process).
//
// Devices: every op makes the backend's device current on the calling thread; Probe and Init
// restore the device that was current before them (cuda_memory.h ScopedDevice).
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
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/cuda_plugin.h"
#include "kernels/cuda/kv_index.h"

namespace kvshare::cuda {
namespace {

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

// The batched WriteKv (see the header comment): rows of WriteKv calls collected until the next
// op of another kind, then stored by one upload and one launch. Shared with the Buffers the
// backend hands out, so freeing a buffer the pending rows read stores them first.
class KvWriteQueue {
 public:
  KvWriteQueue(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

  void Add(const KvGeometry& g, void* pool, const int32_t* table, int start_pos, int n,
           const float* k, const float* v) {
    const int kv_dim = g.n_kv_heads * g.head_dim;
    const bool f16 = g.type == KvType::kF16;
    if (!rows_.empty() &&
        (pool != pool_ || g.block_tokens != block_tokens_ || kv_dim != kv_dim_ || f16 != f16_)) {
      Flush();
    }
    pool_ = pool;
    block_tokens_ = g.block_tokens;
    kv_dim_ = kv_dim;
    f16_ = f16;
    AppendKvWriteRows(table, g.block_tokens, kv_dim, start_pos, n, k, v, &rows_);
  }

  void Flush() {
    if (rows_.empty() || stream_ == nullptr) return;
    ScopedDevice on(device_);
    Check(on.status(), "WriteKv: cudaSetDevice");
    const auto* d = static_cast<const KvWriteRow*>(
        upload_.Upload(rows_.data(), rows_.size() * sizeof(KvWriteRow), stream_, "WriteKv rows"));
    LaunchWriteKvRows(block_tokens_, kv_dim_, f16_, pool_, d, static_cast<int>(rows_.size()),
                      stream_);
    Check(cudaGetLastError(), "WriteKv");
    rows_.clear();
  }

  // Stores what is pending; later calls do nothing (the stream is about to go).
  void Close() {
    Flush();
    stream_ = nullptr;
  }

  absl::Status Reserve(size_t bytes) { return upload_.Reserve(bytes, stream_, "WriteKv rows"); }

 private:
  const int device_;
  cudaStream_t stream_;
  Uploader upload_;
  std::vector<KvWriteRow> rows_;
  void* pool_ = nullptr;
  int block_tokens_ = 0, kv_dim_ = 0;
  bool f16_ = false;
};

class CudaBuffer : public Buffer {
 public:
  CudaBuffer(std::unique_ptr<DeviceMemory> mem, size_t size, std::weak_ptr<KvWriteQueue> writes)
      : mem_(std::move(mem)), size_(size), writes_(std::move(writes)) {}
  ~CudaBuffer() override {
    if (auto w = writes_.lock()) w->Flush();  // pending rows may read or write this memory
  }
  void* data() override { return mem_->get(); }
  size_t size() const override { return size_; }

 private:
  std::unique_ptr<DeviceMemory> mem_;
  size_t size_;
  std::weak_ptr<KvWriteQueue> writes_;
};

// A weight on the device as fp16 or bf16 [rows][cols]. tensor() keeps the source's name, type
// and shape; its data pointer is not read after Prepare.
class CudaWeight : public PreparedWeight {
 public:
  CudaWeight(const Tensor& t, std::shared_ptr<DeviceMemory> mem, bool bf16)
      : tensor_(t), mem_(std::move(mem)), bf16_(bf16) {}
  const Tensor& tensor() const override { return tensor_; }
  bool reads_source() const override { return false; }
  const void* data() const { return mem_->get(); }
  int64_t rows() const { return tensor_.rows(); }
  int64_t cols() const { return tensor_.cols(); }
  bool bf16() const { return bf16_; }

 private:
  Tensor tensor_;
  std::shared_ptr<DeviceMemory> mem_;
  bool bf16_;
};

// GEMM input rows the activation scratch is sized for as weights are prepared (the engine's
// steps are at most max_step_rows rows: 256 by default, 512 in the benchmarks).
constexpr int64_t kReserveRows = 512;
// cuBLAS workspace: NVIDIA's recommendation for Hopper (32 MiB) covers the older GPUs too.
constexpr size_t kBlasWorkspaceBytes = 32u << 20;

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const KvshareCudaBackendOptions& o) {
    std::unique_ptr<CudaBackend> b(new CudaBackend(o));
    absl::Status s = b->Init();
    if (!s.ok()) return s;
    return b;
  }

  ~CudaBackend() override {
    if (stream_ != nullptr) {
      ScopedDevice on(device_);
      writes_->Close();
      cudaStreamSynchronize(stream_);
    }
    writes_.reset();
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name() const override {
    return absl::StrFormat("cuda (%s, sm_%d%d, %s weights)", device_name_, cc_major_, cc_minor_,
                           bf16_ ? "bf16" : "fp16 (bf16 where stored BF16)");
  }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    Enter();
    auto m = DeviceAlloc(bytes, "a buffer");
    if (!m.ok()) return m.status();
    return std::unique_ptr<Buffer>(new CudaBuffer(std::move(*m), bytes, writes_));
  }

  void CopyToHost(const void* src, size_t bytes, void* dst_host) override {
    Enter();
    Check(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, stream_), "CopyToHost");
    Check(cudaStreamSynchronize(stream_), "CopyToHost (the ops queued before it)");
  }
  void CopyFromHost(const void* src_host, size_t bytes, void* dst) override {
    Enter();
    Check(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, stream_), "CopyFromHost");
    Check(cudaStreamSynchronize(stream_), "CopyFromHost");
  }
  void Copy(const void* src, size_t bytes, void* dst) override {
    Enter();
    if (bytes == 0) return;
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "Copy");
  }
  int64_t FreeMemoryBytes() override {
    Enter();
    size_t free_b = 0, total_b = 0;
    Check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    return static_cast<int64_t>(free_b);
  }

  absl::StatusOr<std::unique_ptr<PreparedWeight>> PrepareWeight(
      const Tensor& w, const SourceProgress& progress) override {
    Enter();
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
    // BF16 matrices stay bf16 (and so do their GEMM inputs): fp16 could overflow.
    const bool bf16 = bf16_ || w.type == DType::kBF16;
    // The GEMM input scratch for kReserveRows rows of this width, taken now (before the KV
    // pool is sized from free memory) rather than at the first MatMul.
    if (absl::Status s = act_.Reserve(static_cast<size_t>(kReserveRows * w.cols()) * 2, stream_,
                                      "MatMul activations");
        !s.ok()) {
      return s;
    }
    // A tied output matrix is the embedding's very bytes: upload it once.
    const auto key = std::make_tuple(w.data, static_cast<uint32_t>(w.type), n);
    if (auto it = uploaded_.find(key); it != uploaded_.end()) {
      if (auto mem = it->second.lock())
        return std::unique_ptr<PreparedWeight>(new CudaWeight(w, mem, bf16));
    }
    auto dst = DeviceAlloc(static_cast<size_t>(n) * 2, "weights");
    if (!dst.ok())
      return absl::Status(dst.status().code(),
                          absl::StrCat(dst.status().message(), " (tensor ", w.name, ")"));
    auto src = DeviceAlloc(src_bytes, "a weight upload");
    if (!src.ok()) return src.status();
    Check(cudaMemcpyAsync((*src)->get(), w.data, src_bytes, cudaMemcpyHostToDevice, stream_),
          "Prepare upload");
    LaunchDequantize(static_cast<uint32_t>(w.type), (*src)->get(), n, bf16, (*dst)->get(), stream_);
    Check(cudaGetLastError(), "Prepare dequantize");
    Check(cudaStreamSynchronize(stream_), "Prepare");  // before the staging copy is freed
    if (progress) progress(static_cast<const uint8_t*>(w.data) + src_bytes);
    std::shared_ptr<DeviceMemory> mem(std::move(*dst));
    uploaded_[key] = mem;
    return std::unique_ptr<PreparedWeight>(new CudaWeight(w, mem, bf16));
  }

  void MatMul(const PreparedWeight& pw, const float* x, int n, float* out) override {
    Enter();
    if (n <= 0) return;
    const auto& w = static_cast<const CudaWeight&>(pw);
    const int64_t rows = w.rows(), cols = w.cols();
    void* xh = act_.Ensure(static_cast<size_t>(n) * cols * 2, stream_, "MatMul activations");
    LaunchToHalf(x, static_cast<int64_t>(n) * cols, w.bf16(), xh, stream_);
    Check(cudaGetLastError(), "MatMul convert");
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t t = w.bf16() ? CUDA_R_16BF : CUDA_R_16F;
    // Column-major view: out^T[rows][n] = (W as [cols][rows])^T * (x as [cols][n]).
    CheckBlas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), n,
                           static_cast<int>(cols), &one, w.data(), t, static_cast<int>(cols), xh, t,
                           static_cast<int>(cols), &zero, out, CUDA_R_32F, static_cast<int>(rows),
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "MatMul cublasGemmEx");
  }

  void Embed(const PreparedWeight& table, const int32_t* ids, int n, float* out) override {
    Enter();
    if (n <= 0) return;
    const auto& t = static_cast<const CudaWeight&>(table);
    const auto* d_ids = static_cast<const int32_t*>(ids_.Upload(ids, n * 4, stream_, "Embed ids"));
    LaunchEmbed(t.data(), t.bf16(), d_ids, n, static_cast<int>(t.cols()), out, stream_);
    Check(cudaGetLastError(), "Embed");
  }

  void RmsNorm(const float* x, const float* weight, int n, int dim, float eps,
               float* out) override {
    Enter();
    LaunchRmsNorm(x, weight, n, dim, eps, out, stream_);
    Check(cudaGetLastError(), "RmsNorm");
  }

  void Rope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, float theta) override {
    Enter();
    if (n <= 0 || head_dim < 2) return;
    const auto* d_pos =
        static_cast<const int32_t*>(positions_.Upload(pos, n * 4, stream_, "Rope positions"));
    if (head_dim != rope_head_dim_ || theta != rope_theta_) {
      rope_freq_host_.resize(head_dim / 2);
      RopeInverseFrequencies(head_dim, theta, rope_freq_host_.data());
      rope_head_dim_ = head_dim;
      rope_theta_ = theta;
    }
    const auto* d_freq = static_cast<const float*>(rope_freq_.Upload(
        rope_freq_host_.data(), rope_freq_host_.size() * 4, stream_, "Rope frequencies"));
    LaunchRope(x, d_pos, n, n_heads, head_dim, d_freq, stream_);
    Check(cudaGetLastError(), "Rope");
  }

  void SiluMul(const float* gate, const float* up, int64_t count, float* out) override {
    Enter();
    LaunchSiluMul(gate, up, count, out, stream_);
    Check(cudaGetLastError(), "SiluMul");
  }

  void Add(float* x, const float* y, int64_t count) override {
    Enter();
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

  // Queued; stored with the other sequences' rows when the next op of another kind arrives.
  void WriteKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
               const float* k, const float* v, void* /*tail*/) override {
    Bind();
    if (!SupportsKvType(g.type).ok()) Die(std::string(SupportsKvType(g.type).message()));
    if (n <= 0) return;
    writes_->Add(g, pool, block_table, start_pos, n, k, v);
  }

  void Attention(const KvGeometry& g, const void* pool, const AttentionSeq* seqs, int n_seqs,
                 const float* q, int n_heads, float* out) override {
    Enter();
    if (!SupportsKvType(g.type).ok()) Die(std::string(SupportsKvType(g.type).message()));
    if (g.head_dim > kMaxHeadDim || g.head_dim < 1 || g.n_kv_heads < 1 ||
        n_heads % g.n_kv_heads != 0) {
      Die(
          absl::StrFormat("Attention: head_dim %d (limit %d), n_heads %d, n_kv_heads %d not "
                          "supported (n_heads must be a multiple of n_kv_heads)",
                          g.head_dim, kMaxHeadDim, n_heads, g.n_kv_heads));
    }
    const int group = n_heads / g.n_kv_heads;
    PlanAttention(seqs, n_seqs, g.block_tokens, group, g.n_kv_heads, g.head_dim <= kTileMaxHeadDim,
                  multiprocessors_, &plan_);
    const int n_items = static_cast<int>(plan_.items.size());
    const int n_tiles = static_cast<int>(plan_.tiles.size());
    if (n_items == 0 && n_tiles == 0) return;
    // One upload: the tables, then the items, then the tiles (each 4 int32s).
    packed_.assign(plan_.tables.begin(), plan_.tables.end());
    const size_t items_at = packed_.size();
    const auto* ib = reinterpret_cast<const int32_t*>(plan_.items.data());
    packed_.insert(packed_.end(), ib, ib + 4 * plan_.items.size());
    const size_t tiles_at = packed_.size();
    const auto* tb = reinterpret_cast<const int32_t*>(plan_.tiles.data());
    packed_.insert(packed_.end(), tb, tb + 4 * plan_.tiles.size());
    const auto* d = static_cast<const int32_t*>(
        att_upload_.Upload(packed_.data(), packed_.size() * 4, stream_, "Attention tables"));
    const bool f16 = g.type == KvType::kF16;
    if (n_tiles > 0) {
      const AttentionShape shape{g.block_tokens, g.n_kv_heads, n_heads, g.head_dim,
                                 plan_.tiles_max_len};
      LaunchAttentionTiles(shape, f16, pool, d,
                           reinterpret_cast<const AttentionTile*>(d + tiles_at), n_tiles, q, out,
                           stream_);
      Check(cudaGetLastError(), "Attention (tiles)");
    }
    if (n_items > 0) {
      const AttentionShape shape{g.block_tokens, g.n_kv_heads, n_heads, g.head_dim,
                                 plan_.items_max_len};
      int split_tokens = 0;
      const int splits = AttentionSplits(shape, n_items, multiprocessors_, &split_tokens);
      const int64_t scratch_floats = AttentionScratchFloats(shape, n_items, splits);
      float* scratch = scratch_floats > 0 ? static_cast<float*>(att_scratch_.Ensure(
                                                scratch_floats * 4, stream_, "Attention scratch"))
                                          : nullptr;
      LaunchAttention(shape, f16, pool, d, reinterpret_cast<const AttentionItem*>(d + items_at),
                      n_items, splits, split_tokens, q, scratch, out, stream_);
      Check(cudaGetLastError(), "Attention");
    }
  }

 private:
  // Makes the backend's device current on the calling thread (the engine may run on another
  // thread than the one that created the backend, and another backend may have switched it).
  void Bind() {
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess || current != device_) {
      Check(cudaSetDevice(device_), "cudaSetDevice");
    }
  }
  // Every op but WriteKv: bind, and store the WriteKv rows queued before it.
  void Enter() {
    Bind();
    writes_->Flush();
  }

  explicit CudaBackend(const KvshareCudaBackendOptions& o)
      : device_(o.device), bf16_(o.weights_bf16 != 0) {}

  absl::Status Init() {
    ScopedDevice on(device_);
    cudaError_t e = on.status();
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      stream_ = nullptr;
      return absl::UnavailableError(
          absl::StrFormat("cuda backend: device %d: %s", device_, cudaGetErrorString(e)));
    }
    writes_ = std::make_shared<KvWriteQueue>(device_, stream_);
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
    // Memory the first ops would otherwise take after the KV pool has been sized from what is
    // free: the cuBLAS workspace (ours, so cuBLAS allocates none), the split-attention scratch
    // (its largest size: about two waves of blocks over the SMs, kMaxHeadDim + 2 floats per
    // head state; cuda_kernels.cu AttentionSplits) and the upload buffers.
    auto ws = DeviceAlloc(kBlasWorkspaceBytes, "the cuBLAS workspace");
    if (!ws.ok()) return ws.status();
    blas_workspace_ = std::move(*ws);
    const cublasStatus_t ws_status =
        cublasSetWorkspace(blas_, blas_workspace_->get(), kBlasWorkspaceBytes);
    if (ws_status != CUBLAS_STATUS_SUCCESS) {
      return absl::UnavailableError(absl::StrFormat("cuda backend: cublasSetWorkspace: %s",
                                                    cublasGetStatusString(ws_status)));
    }
    const size_t att_bytes = size_t(16) * multiprocessors_ * 4 * (kMaxHeadDim + 2) * 4;
    for (absl::Status r :
         {att_scratch_.Reserve(att_bytes, stream_, "Attention scratch"),
          att_upload_.Reserve(1 << 20, stream_, "Attention tables"),
          ids_.Reserve(16 << 10, stream_, "Embed ids"),
          positions_.Reserve(16 << 10, stream_, "Rope positions"),
          rope_freq_.Reserve(1 << 10, stream_, "Rope frequencies"), writes_->Reserve(256 << 10)}) {
      if (!r.ok()) return r;
    }
    return absl::OkStatus();
  }

  const int device_;
  const bool bf16_;
  std::string device_name_;
  int cc_major_ = 0, cc_minor_ = 0, multiprocessors_ = 1;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::unique_ptr<DeviceMemory> blas_workspace_;
  std::shared_ptr<KvWriteQueue> writes_;
  std::map<std::tuple<const void*, uint32_t, int64_t>, std::weak_ptr<DeviceMemory>> uploaded_;
  Scratch act_, att_scratch_;
  Uploader ids_, positions_, rope_freq_, att_upload_;
  int rope_head_dim_ = 0;
  float rope_theta_ = 0.0f;
  std::vector<float> rope_freq_host_;
  AttentionPlan plan_;
  std::vector<int32_t> packed_;
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
  // cudaMemGetInfo reads the current device: switch to `device` for it, and back.
  ScopedDevice on(device);
  if (e == cudaSuccess) e = on.status();
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
