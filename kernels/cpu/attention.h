// Causal GQA attention over the paged KV pool on the CPU.
//
// Work items are (sequence, KV head, tile of up to kQueryTile consecutive queries); an item's
// rows are its queries x the query heads of that KV head. Each row's context is cut into fixed
// chunks of kAttentionChunk positions whose partial softmax results merge in position order
// (flash-decoding). When there are few items (decode of a few long sequences), an item's
// chunks run on different threads and are merged after; otherwise one thread runs an item's
// chunks in order. Both do the same float operations in the same order, and a row's arithmetic
// does not depend on the other rows of its tile, so results depend neither on the thread count
// nor on whether a token was computed in prefill or in decode — except in an int4 pool, where
// a block that fills inside a prefill chunk is read quantised by that chunk's queries but was
// read from the f16 tail by the decode steps that built it (KIVI's rule: the newest incomplete
// block stays f16; block 0 stays f16 for good).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace kvshare::cpu {

constexpr int kAttentionChunk = kMaxChunk;
constexpr int kQueryTile = 8;

class AttentionRunner {
 public:
  // int4_in_place: ChunkRows::int4_in_place.
  AttentionRunner(ThreadPool* pool, Isa isa, bool int4_in_place = true);

  void Run(const KvGeometry& g, const void* pool, const AttentionSeq* seqs, int n_seqs,
           const float* q, int n_heads, float* out);

 private:
  struct Item {
    int seq;
    int kv_head;
    int j0, j1;             // queries [j0, j1) of the sequence
    int lo;                 // first position its rows see (> 0 only under a sliding window)
    int c0;                 // chunk holding lo: its chunks are [c0, n_chunks)
    int n_chunks;           // of its last query
    int64_t first_partial;  // split mode: index of its first chunk's partial
  };
  struct Scratch {
    std::vector<float> scores, run, next;
    std::vector<float> kv;  // compact KV types: the chunk's dequantised K/V
    std::vector<const float*> q;
    std::vector<float*> out;
    std::vector<int> limit;
  };

  ThreadPool* pool_;
  Isa isa_;
  bool int4_in_place_;
  std::vector<Item> items_;
  std::vector<float> partials_;   // split mode
  std::vector<Scratch> scratch_;  // per thread
};

}  // namespace kvshare::cpu
