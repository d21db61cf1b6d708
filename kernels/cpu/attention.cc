#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/kv_chunk.h"

namespace kvshare::cpu {

namespace scalar {
namespace {

struct ScalarHalf {
  static void Convert(const uint16_t* src, int n, float* dst) {
    for (int i = 0; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
  }
};

}  // namespace

void GatherChunk(const ChunkRows& a, ChunkKv* kv) { GatherChunkT<ScalarHalf>(a, kv); }

void AttendChunk(const ChunkRows& a) {
  const KvGeometry& geo = *a.geometry;
  const int hd = geo.head_dim, len = a.p1 - a.p0;
  ChunkKv kv;
  GatherChunk(a, &kv);
  for (int r = 0; r < a.n_rows; ++r) {
    const int end = std::min(a.p1, a.limit[r] + 1);
    float* s = a.scores + static_cast<int64_t>(r) * len;
    for (int p = a.p0; p < end; ++p) {
      const float* k = kv.k[p - a.p0];
      float dot = 0.0f;
      for (int i = 0; i < hd; ++i) dot += a.q[r][i] * k[i];
      s[p - a.p0] = dot * a.scale;
    }
    float max = -INFINITY, sum = 0.0f;
    for (int p = a.p0; p < end; ++p) max = std::fmax(max, s[p - a.p0]);
    for (int p = a.p0; p < end; ++p) {
      s[p - a.p0] = std::exp(s[p - a.p0] - max);
      sum += s[p - a.p0];
    }
    a.m[r] = max;
    a.l[r] = sum;
    float* o = a.o + static_cast<int64_t>(r) * hd;
    std::fill(o, o + hd, 0.0f);
    for (int p = a.p0; p < end; ++p) {
      const float* v = kv.v[p - a.p0];
      for (int i = 0; i < hd; ++i) o[i] += s[p - a.p0] * v[i];
    }
  }
}

}  // namespace scalar

void MergePartial(int n_rows, int head_dim, float* m, float* l, float* o, const float* m2,
                  const float* l2, const float* o2) {
  for (int r = 0; r < n_rows; ++r) {
    const float mx = std::fmax(m[r], m2[r]);
    const float a = std::exp(m[r] - mx), b = std::exp(m2[r] - mx);
    m[r] = mx;
    l[r] = l[r] * a + l2[r] * b;
    float* orow = o + static_cast<int64_t>(r) * head_dim;
    const float* o2row = o2 + static_cast<int64_t>(r) * head_dim;
    for (int i = 0; i < head_dim; ++i) orow[i] = orow[i] * a + o2row[i] * b;
  }
}

namespace {

void Attend(Isa isa, const ChunkRows& a) {
  switch (isa) {
    case Isa::kAvx512:
      return avx512::AttendChunk(a);
    case Isa::kAvx2:
      return avx2::AttendChunk(a);
    case Isa::kScalar:
      return scalar::AttendChunk(a);
  }
}

// A partial for n rows laid out as m[n], l[n], o[n][head_dim].
struct Partial {
  float* m;
  float* l;
  float* o;
  Partial(float* base, int n_rows) : m(base), l(base + n_rows), o(base + 2 * n_rows) {}
};

}  // namespace

AttentionRunner::AttentionRunner(ThreadPool* pool, Isa isa, bool int4_in_place)
    : pool_(pool), isa_(isa), int4_in_place_(int4_in_place), scratch_(pool->threads()) {}

void AttentionRunner::Run(const KvGeometry& geo, const void* pool, const AttentionSeq* seqs,
                          int n_seqs, const float* q, int n_heads, float* out) {
  const int hd = geo.head_dim;
  const int group = n_heads / geo.n_kv_heads;
  const int64_t q_dim = static_cast<int64_t>(n_heads) * hd;
  const int max_rows = kQueryTile * group;
  const int64_t partial_floats = static_cast<int64_t>(max_rows) * (hd + 2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  items_.clear();
  int64_t total_chunks = 0;
  for (int s = 0; s < n_seqs; ++s) {
    for (int h = 0; h < geo.n_kv_heads; ++h) {
      // A sliding window gives each query its own first position, so once it cuts anything
      // the sequence's items hold one query each (all rows of an item share [lo, limit]).
      const AttentionSeq& seq = seqs[s];
      const bool windowed = seq.window > 0 && seq.start_pos + seq.n_q > seq.window;
      const int tile = windowed ? 1 : kQueryTile;
      for (int j0 = 0; j0 < seq.n_q; j0 += tile) {
        const int j1 = std::min(seq.n_q, j0 + tile);
        const int ctx = seq.start_pos + j1;  // positions the last query sees
        const int n_chunks = (ctx + kAttentionChunk - 1) / kAttentionChunk;
        const int lo = windowed ? std::max(0, seq.start_pos + j0 - seq.window + 1) : 0;
        const int c0 = lo / kAttentionChunk;
        items_.push_back({s, h, j0, j1, lo, c0, n_chunks, total_chunks});
        total_chunks += n_chunks - c0;
      }
    }
  }
  const int64_t n_items = static_cast<int64_t>(items_.size());
  if (n_items == 0) return;
  for (Scratch& s : scratch_) {
    // +16: the SIMD kernels write whole 16-lane groups past a row's last score.
    if (s.scores.size() < static_cast<size_t>(max_rows) * kAttentionChunk + 16) {
      s.scores.resize(static_cast<size_t>(max_rows) * kAttentionChunk + 16);
      s.run.resize(partial_floats);
      s.next.resize(partial_floats);
      s.q.resize(max_rows);
      s.out.resize(max_rows);
      s.limit.resize(max_rows);
    }
    if (geo.type != KvType::kF32 && static_cast<int64_t>(s.kv.size()) < KvScratchFloats(hd)) {
      s.kv.resize(KvScratchFloats(hd));
    }
  }

  // Rows of an item, query-major: row (j, g) = query head kv_head * group + g of query j.
  // Limits grow with the row index, so the rows that see chunk c are a suffix.
  auto set_rows = [&](const Item& it, Scratch& s) {
    const AttentionSeq& seq = seqs[it.seq];
    int r = 0;
    for (int j = it.j0; j < it.j1; ++j) {
      const int64_t off = (seq.q_row + j) * q_dim + static_cast<int64_t>(it.kv_head) * group * hd;
      for (int g = 0; g < group; ++g, ++r) {
        s.q[r] = q + off + g * hd;
        s.out[r] = out + off + g * hd;
        s.limit[r] = seq.start_pos + j;
      }
    }
    return r;
  };
  auto first_row_seeing = [&](const Scratch& s, int n_rows, int c) {
    int r = 0;
    while (r < n_rows && s.limit[r] < c * kAttentionChunk) ++r;
    return r;
  };
  // Attends rows [r0, n_rows) of the item to chunk c, into partial p (laid out for n_rows).
  auto attend = [&](const Item& it, Scratch& s, int n_rows, int c, int r0, float* p) {
    Partial part(p, n_rows);
    ChunkRows a;
    a.geometry = &geo;
    a.pool = pool;
    a.block_table = seqs[it.seq].block_table;
    a.tail = seqs[it.seq].tail;
    a.stored = seqs[it.seq].start_pos + seqs[it.seq].n_q;
    a.kv_scratch = s.kv.data();
    a.kv_head = it.kv_head;
    a.p0 = std::max(c * kAttentionChunk, it.lo);
    a.p1 = std::min(s.limit[n_rows - 1] + 1, (c + 1) * kAttentionChunk);
    a.scale = scale;
    a.int4_in_place = int4_in_place_;
    a.n_rows = n_rows - r0;
    a.q = s.q.data() + r0;
    a.limit = s.limit.data() + r0;
    a.scores = s.scores.data();
    a.m = part.m + r0;
    a.l = part.l + r0;
    a.o = part.o + static_cast<int64_t>(r0) * hd;
    Attend(isa_, a);
  };
  auto merge = [&](int n_rows, int r0, float* run, float* next) {
    Partial a(run, n_rows), b(next, n_rows);
    MergePartial(n_rows - r0, hd, a.m + r0, a.l + r0, a.o + static_cast<int64_t>(r0) * hd, b.m + r0,
                 b.l + r0, b.o + static_cast<int64_t>(r0) * hd);
  };
  auto normalize = [&](const Scratch& s, int n_rows, float* run) {
    Partial a(run, n_rows);
    for (int r = 0; r < n_rows; ++r) {
      const float inv = 1.0f / a.l[r];
      for (int i = 0; i < hd; ++i) s.out[r][i] = a.o[static_cast<int64_t>(r) * hd + i] * inv;
    }
  };

  const bool split =
      pool_->threads() > 1 && n_items < 4 * pool_->threads() && total_chunks > n_items;
  if (!split) {
    pool_->ParallelFor(n_items, [&](int64_t i, int thread) {
      const Item& it = items_[i];
      Scratch& s = scratch_[thread];
      const int n_rows = set_rows(it, s);
      attend(it, s, n_rows, it.c0, 0, s.run.data());
      for (int c = it.c0 + 1; c < it.n_chunks; ++c) {
        const int r0 = first_row_seeing(s, n_rows, c);
        attend(it, s, n_rows, c, r0, s.next.data());
        merge(n_rows, r0, s.run.data(), s.next.data());
      }
      normalize(s, n_rows, s.run.data());
    });
    return;
  }
  // Split mode: every (item, chunk) is a task; then each item folds its chunks in order.
  if (static_cast<int64_t>(partials_.size()) < total_chunks * partial_floats) {
    partials_.resize(total_chunks * partial_floats);
  }
  pool_->ParallelFor(total_chunks, [&](int64_t task, int thread) {
    int64_t i = 0;  // items are few here: a linear scan
    while (i + 1 < n_items && items_[i + 1].first_partial <= task) ++i;
    const Item& it = items_[i];
    const int c = it.c0 + static_cast<int>(task - it.first_partial);
    Scratch& s = scratch_[thread];
    const int n_rows = set_rows(it, s);
    attend(it, s, n_rows, c, first_row_seeing(s, n_rows, c),
           partials_.data() + task * partial_floats);
  });
  pool_->ParallelFor(n_items, [&](int64_t i, int thread) {
    const Item& it = items_[i];
    Scratch& s = scratch_[thread];
    const int n_rows = set_rows(it, s);
    float* run = partials_.data() + it.first_partial * partial_floats;
    for (int c = it.c0 + 1; c < it.n_chunks; ++c) {
      merge(n_rows, first_row_seeing(s, n_rows, c), run, run + (c - it.c0) * partial_floats);
    }
    normalize(s, n_rows, run);
  });
}

}  // namespace kvshare::cpu
