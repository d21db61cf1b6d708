// Launchers of the CUDA kernels (cuda_kernels.cu), callable from plain C++: no CUDA types in
// the signatures but the stream. Every pointer is device memory. All launches are asynchronous
// on `stream`; the caller checks errors (cudaGetLastError) where it wants them.
//
// Conventions are those of kernels/backend.h; each kernel's reference is in
// kernels/cpu/reference.cc.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvshare::cuda {

// Stored GGML blocks -> fp16 (or bf16 when `bf16`) elements, row-major, `n_elems` elements.
// type: the GGML id (kernels/tensor.h). Returns false for a type it does not know.
bool LaunchDequantize(uint32_t type, const void* src, int64_t n_elems, bool bf16, void* dst,
                      cudaStream_t stream);

// fp32 -> fp16/bf16 (GEMM inputs).
void LaunchToHalf(const float* x, int64_t count, bool bf16, void* out, cudaStream_t stream);

// out[i][:] = table[ids[i]][:] as fp32; table is fp16/bf16 [vocab][dim].
void LaunchEmbed(const void* table, bool bf16, const int32_t* ids, int n, int dim, float* out,
                 cudaStream_t stream);

void LaunchRmsNorm(const float* x, const float* weight, int n, int dim, float eps, float* out,
                   cudaStream_t stream);

void LaunchRope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, float theta,
                cudaStream_t stream);

void LaunchSiluMul(const float* gate, const float* up, int64_t count, float* out,
                   cudaStream_t stream);

void LaunchAdd(float* x, const float* y, int64_t count, cudaStream_t stream);

// k, v: [n][kv_dim]; table: the block ids of the sequence from block 0. The pool holds fp32,
// or IEEE half when f16 (KvType f32 / f16: the same layout element for element).
void LaunchWriteKv(int block_tokens, int kv_dim, bool f16, void* pool, const int32_t* table,
                   int start_pos, int n, const float* k, const float* v, cudaStream_t stream);

// One query row of a paged attention call: output row `row` (of q and out), whose sequence's
// block table starts at tables[table_offset], at position `pos` (it attends to [0, pos]).
struct AttentionItem {
  int32_t row;
  int32_t pos;
  int32_t table_offset;
  int32_t pad;
};

struct AttentionShape {
  int block_tokens;
  int n_kv_heads;
  int n_heads;
  int head_dim;  // <= kMaxHeadDim
  int max_len;   // longest attended length over the items (pos + 1)
};

constexpr int kMaxHeadDim = 256;

// Keys per split of the sequence in decode-style attention (flash-decoding): a row attending to
// `len` positions is spread over ceil(len / split_tokens) thread blocks whose partial softmax
// states are merged by a second kernel.
int AttentionSplits(const AttentionShape& shape, int n_items, int multiprocessors,
                    int* split_tokens);

// Floats of scratch LaunchAttention needs for the partial states when splits > 1.
int64_t AttentionScratchFloats(const AttentionShape& shape, int n_items, int splits);

void LaunchAttention(const AttentionShape& shape, bool f16, const void* pool, const int32_t* tables,
                     const AttentionItem* items, int n_items, int splits, int split_tokens,
                     const float* q, float* scratch, float* out, cudaStream_t stream);

}  // namespace kvshare::cuda
