// Launchers of the CUDA kernels (cuda_kernels.cu), callable from plain C++: no CUDA types in
// the signatures but the stream. Every pointer is device memory. All launches are asynchronous
// on `stream`; the caller checks errors (cudaGetLastError) where it wants them.
//
// Conventions are those of kernels/backend.h; each kernel's reference is in
// kernels/cpu/reference.cc.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/kv_index.h"

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

// freq: head_dim / 2 inverse frequencies on the device (attention_plan.h
// RopeInverseFrequencies, computed on the host); the angle is pos * freq in fp32 as in the
// reference.
void LaunchRope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, const float* freq,
                cudaStream_t stream);

void LaunchSiluMul(const float* gate, const float* up, int64_t count, float* out,
                   cudaStream_t stream);

void LaunchAdd(float* x, const float* y, int64_t count, cudaStream_t stream);

// The batched WriteKv: rows[0..n_rows) (kv_index.h KvWriteRow, device memory), each row's K
// and V (kv_dim floats) stored into its pool slot, in one launch. The pool holds fp32, or IEEE
// half when f16 (KvType f32 / f16: the same layout element for element).
void LaunchWriteKvRows(int block_tokens, int kv_dim, bool f16, void* pool, const KvWriteRow* rows,
                       int n_rows, cudaStream_t stream);

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

// The tiled prefill kernel (flash-attention style): one thread block per (tile, KV head,
// chunk of TileHeads(group) query heads) keeps the tile's query vectors in registers and reads
// each K/V tile of kTileKeys positions into shared memory once for all of them, with an online
// softmax. head_dim <= kTileMaxHeadDim; shape.max_len is unused.
void LaunchAttentionTiles(const AttentionShape& shape, bool f16, const void* pool,
                          const int32_t* tables, const AttentionTile* tiles, int n_tiles,
                          const float* q, float* out, cudaStream_t stream);

}  // namespace kvshare::cuda
