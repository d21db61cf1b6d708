// Microbenchmarks of the CPU backend's kernels, each figure beside its limit: matvec bandwidth
// (GB/s of weights read) for the SmolLM2-135M shapes, the full decode sweep of that model's
// matmuls (tok/s at n = 1, 4, 16, 64), prefill GEMM throughput (GFLOP/s, int8 GEMM vs sgemm on
// dequantized tiles) and attention. Weights are seeded random in the real types and shapes
// (speed does not depend on their values); "cold" rotates through copies larger than the L3
// cache, as a forward pass does.
//
//   kernels_bench [--threads=1,2] [--quick] [--only=matvec|model|gemm|sgemm|attention|kv-attention]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

namespace kvshare {
namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds per call of fn over batches run for about `budget` seconds.
double TimeIt(const std::function<void()>& fn, double budget = 0.4) {
  fn();  // warm-up (scratch growth, page faults)
  std::vector<double> per_call;
  const double start = Seconds();
  int batch = 1;
  while (Seconds() - start < budget || per_call.size() < 5) {
    const double t0 = Seconds();
    for (int i = 0; i < batch; ++i) fn();
    const double dt = (Seconds() - t0) / batch;
    per_call.push_back(dt);
    if (dt * batch < 0.01) batch *= 2;
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

// The least CPU time per call of fn on the calling thread (a one-thread backend runs there)
// over batches run for about `budget` seconds of it: figures a loaded host barely moves.
double ThreadCpuTimeIt(const std::function<void()>& fn, double budget = 0.3) {
  auto cpu_now = [] {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
  };
  fn();  // warm-up
  double best = 1e30;
  const double start = cpu_now();
  while (cpu_now() - start < budget) {
    const double t0 = cpu_now();
    for (int i = 0; i < 4; ++i) fn();
    best = std::min(best, (cpu_now() - t0) / 4);
  }
  return best;
}

struct Weight {
  std::vector<uint8_t> bytes;
  Tensor tensor;
};

Weight RandomWeight(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> row(cols);
  Weight w;
  const size_t row_bytes = StorageBytes(type, cols);
  w.bytes.resize(row_bytes * rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = dist(rng);
    cpu::QuantizeRow(type, row.data(), cols, w.bytes.data() + r * row_bytes);
  }
  w.tensor.name = "bench";
  w.tensor.type = type;
  w.tensor.shape = {cols, rows};
  w.tensor.data = w.bytes.data();
  w.tensor.nbytes = w.bytes.size();
  return w;
}

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::unique_ptr<Backend> MakeBackend(int threads, bool int8, cpu::QuantGemm gemm) {
  CpuBackendOptions o;
  o.threads = threads;
  o.matmul.activations = int8 ? cpu::Activations::kInt8 : cpu::Activations::kF32;
  o.matmul.quant_gemm = gemm;
  return MakeCpuBackend(o);
}

const char* PathName(bool int8, cpu::QuantGemm gemm, int n) {
  if (n < 16) return int8 ? "int8 vnni" : "fp32 fused";
  if (!int8) return "sgemm tiles";
  return gemm == cpu::QuantGemm::kInt8 ? "int8 gemm" : "sgemm tiles";
}

// The limit of a weight-streaming kernel: a plain read of `bytes` (rotating through copies larger
// than the L3 cache, like the cold matvec) summed with AVX2, split over `threads` threads.
__attribute__((target("avx2"))) float SumBytes(const uint8_t* p, size_t n) {
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  for (size_t i = 0; i + 64 <= n; i += 64) {
    a = _mm256_add_ps(a, _mm256_load_ps(reinterpret_cast<const float*>(p + i)));
    b = _mm256_add_ps(b, _mm256_load_ps(reinterpret_cast<const float*>(p + i + 32)));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(a, b));
  return out[0];
}

double StreamGBps(size_t bytes, int threads) {
  bytes = (bytes + 4095) / 4096 * 4096;
  const int copies = static_cast<int>(std::max<size_t>(2, (160u << 20) / bytes));
  std::vector<uint8_t*> bufs;
  for (int i = 0; i < copies; ++i) {
    bufs.push_back(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
    std::memset(bufs.back(), 1, bytes);
  }
  cpu::ThreadPool pool(threads);
  volatile float sink = 0;
  int next = 0;
  const double t = TimeIt([&] {
    const uint8_t* p = bufs[next];
    next = (next + 1) % copies;
    const size_t chunk = bytes / threads / 64 * 64;
    pool.ParallelFor(threads, [&](int64_t i, int) {
      sink = sink + SumBytes(p + i * chunk, i == threads - 1 ? bytes - i * chunk : chunk);
    });
  });
  for (auto* b : bufs) std::free(b);
  return bytes / t / 1e9;
}

// Matvec GB/s: hot (one weight, cache-resident when small) and cold (copies > 128 MiB).
void BenchMatvec(DType type, int64_t cols, int64_t rows, const std::vector<int>& thread_counts) {
  const size_t bytes = StorageBytes(type, cols) * rows;
  const int copies = static_cast<int>(std::max<size_t>(1, (160u << 20) / bytes));
  std::vector<Weight> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(RandomWeight(type, rows, cols, 10 + i));
  const std::vector<float> x = RandomFloats(cols, 1);
  std::vector<float> out(rows);
  for (int threads : thread_counts) {
    const double limit = StreamGBps(bytes, threads);
    for (bool int8 : {true, false}) {
      auto b = MakeBackend(threads, int8, cpu::QuantGemm::kInt8);
      std::vector<std::unique_ptr<PreparedWeight>> pw;
      for (auto& w : ws) pw.push_back(std::move(*b->Prepare(w.tensor)));
      const double hot = TimeIt([&] { b->MatMul(*pw[0], x.data(), 1, out.data()); });
      int next = 0;
      const double cold = TimeIt([&] {
        b->MatMul(*pw[next], x.data(), 1, out.data());
        next = (next + 1) % copies;
      });
      std::printf(
          "| %-5s %5lldx%-5lld | %d | %-10s | %8.1f us | %6.1f | %8.1f us | %6.1f | %6.1f |\n",
          GetDTypeInfo(type).name, static_cast<long long>(cols), static_cast<long long>(rows),
          threads, int8 ? "int8 vnni" : "fp32 fused", hot * 1e6, bytes / hot / 1e9, cold * 1e6,
          bytes / cold / 1e9, limit);
    }
  }
}

// Every matmul of a SmolLM2-135M forward pass (30 layers: q, k, v, o, gate, up, down; Q4_1)
// plus the Q8_0 classifier, for n tokens.
struct ModelMatmuls {
  std::vector<Weight> weights;
  int64_t flops_per_token = 0;
  size_t bytes = 0;
  ModelMatmuls() {
    const int64_t dim = 576, hidden = 1536, kv = 192;
    uint32_t seed = 100;
    for (int l = 0; l < 30; ++l) {
      for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{dim, dim},
                                                                        {kv, dim},
                                                                        {kv, dim},
                                                                        {dim, dim},
                                                                        {hidden, dim},
                                                                        {hidden, dim},
                                                                        {dim, hidden}}) {
        weights.push_back(RandomWeight(DType::kQ4_1, rows, cols, seed++));
      }
    }
    weights.push_back(RandomWeight(DType::kQ8_0, 49152, dim, seed++));
    for (auto& w : weights) {
      flops_per_token += 2 * w.tensor.rows() * w.tensor.cols();
      bytes += w.bytes.size();
    }
  }
};

void BenchModel(const ModelMatmuls& m, int threads, bool int8, cpu::QuantGemm gemm,
                const std::vector<int>& ns, double limit) {
  auto b = MakeBackend(threads, int8, gemm);
  std::vector<std::unique_ptr<PreparedWeight>> pw;
  for (auto& w : m.weights) pw.push_back(std::move(*b->Prepare(w.tensor)));
  const int max_n = *std::max_element(ns.begin(), ns.end());
  const std::vector<float> x = RandomFloats(static_cast<int64_t>(max_n) * 1536, 2);
  std::vector<float> out(static_cast<size_t>(max_n) * 49152);
  for (int n : ns) {
    const double t = TimeIt(
        [&] {
          for (auto& w : pw) b->MatMul(*w, x.data(), n, out.data());
        },
        n >= 128 ? 1.5 : 0.6);
    std::printf("| %4d | %d | %-11s | %8.2f ms | %8.1f | %6.1f | %6.1f | %6.1f |\n", n, threads,
                PathName(int8, gemm, n), t * 1e3, n / t, m.flops_per_token * n / t / 1e9,
                m.bytes / t / 1e9, limit);
  }
}

void BenchSgemmF32(int threads) {
  auto b = MakeBackend(threads, true, cpu::QuantGemm::kInt8);
  const Weight w = RandomWeight(DType::kF32, 1536, 576, 5);
  auto pw = std::move(*b->Prepare(w.tensor));
  const int n = 512;
  const std::vector<float> x = RandomFloats(n * 576, 3);
  std::vector<float> out(n * 1536);
  const double t = TimeIt([&] { b->MatMul(*pw, x.data(), n, out.data()); });
  std::printf("| sgemm F32 576x1536, n = 512 | %d | %8.2f ms | %6.1f GFLOP/s |\n", threads, t * 1e3,
              2.0 * n * 576 * 1536 / t / 1e9);
}

void BenchAttention(int threads) {
  auto b = MakeBackend(threads, true, cpu::QuantGemm::kInt8);
  KvGeometry g{16, 3, 64};
  const int n_heads = 9, ctx = 1024;
  const int n_blocks = ctx / g.block_tokens;
  auto pool = std::move(*b->Allocate(n_blocks * g.block_floats() * sizeof(float) * 4));
  std::vector<float> init = RandomFloats(n_blocks * g.block_floats() * 4, 9);
  std::memcpy(pool->data(), init.data(), init.size() * sizeof(float));
  std::vector<int32_t> table(n_blocks);
  for (int i = 0; i < n_blocks; ++i) table[i] = (i * 7) % (n_blocks * 4);
  const std::vector<float> q = RandomFloats(512 * n_heads * 64, 4);
  std::vector<float> out(512 * n_heads * 64);
  for (int len : {128, 512, 1024}) {
    AttentionSeq s{0, 1, len - 1, table.data(), n_blocks};
    const double t =
        TimeIt([&] { b->Attention(g, pool->f32(), &s, 1, q.data(), n_heads, out.data()); });
    std::printf("| attention decode, ctx %-4d (9/3 heads, hd 64) | %d | %8.1f us |\n", len, threads,
                t * 1e6);
  }
  AttentionSeq s{0, 512, 0, table.data(), n_blocks};
  const double t =
      TimeIt([&] { b->Attention(g, pool->f32(), &s, 1, q.data(), n_heads, out.data()); });
  std::printf("| attention prefill, 512 tokens (9/3 heads, hd 64) | %d | %8.2f ms |\n", threads,
              t * 1e3);
}

// vpdpbusd (512-bit) per second on one thread, from registers: the VNNI kernels' ceiling.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) double VnniPeakPerSecond() {
  __m512i acc[12];
  __m512i w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(5);
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  const long iters = 20000000;
  const double t0 = Seconds();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], w, x);
    __asm__ volatile("" : "+v"(w));
  }
  const double t = Seconds() - t0;
  volatile int sink = 0;
  alignas(64) int32_t lanes[16];
  for (int i = 0; i < 12; ++i) {
    _mm512_store_si512(lanes, acc[i]);
    sink = sink + lanes[0];
  }
  return iters * 12 / t;
}

// One quantized weight's GEMM, n = 256 tokens, one thread (its least CPU time per call), per
// activation mode: the layers' shapes (L2-resident) beside the output projection (28 MB, read
// from memory once per 64 tokens). "of VNNI peak": vpdpbusd issued (64 MACs each, twice with
// two digits) per second against VnniPeakPerSecond.
void BenchGemm() {
  const bool vnni = cpu::DetectIsa() == cpu::Isa::kAvx512;
  const double peak = vnni ? VnniPeakPerSecond() : 0.0;
  std::printf(
      "| weight (rows x cols) | activations | n = 256, 1 thread | GMAC/s | of VNNI peak |\n");
  std::printf("|---|---|---|---|---|\n");
  const int n = 256;
  struct Shape {
    int64_t rows, cols;
    DType type;
    const char* name;
  };
  for (const Shape& s :
       {Shape{1536, 576, DType::kQ4_1, "Q4_1"}, Shape{576, 1536, DType::kQ4_1, "Q4_1"},
        Shape{49152, 576, DType::kQ8_0, "Q8_0"}}) {
    const Weight w = RandomWeight(s.type, s.rows, s.cols, 7);
    const std::vector<float> x = RandomFloats(n * s.cols, 3);
    std::vector<float> out(n * s.rows);
    for (cpu::Activations a :
         {cpu::Activations::kInt8, cpu::Activations::kInt8x2, cpu::Activations::kF32}) {
      CpuBackendOptions o;
      o.threads = 1;
      o.matmul.activations = a;
      auto b = MakeCpuBackend(o);
      auto pw = std::move(*b->Prepare(w.tensor));
      const double sec = ThreadCpuTimeIt([&] { b->MatMul(*pw, x.data(), n, out.data()); }, 0.6);
      const double macs = double(n) * s.rows * s.cols;
      const int digits = a == cpu::Activations::kInt8x2 ? 2 : 1;
      char share[16] = "-";
      if (vnni && a != cpu::Activations::kF32) {
        std::snprintf(share, sizeof(share), "%.0f%%", 100 * digits * macs / 64 / sec / peak);
      }
      std::printf("| %s %ldx%ld | %s | %7.2f ms | %6.1f | %s |\n", s.name,
                  static_cast<long>(s.rows), static_cast<long>(s.cols), cpu::ActivationsName(a),
                  sec * 1e3, macs / sec / 1e9, share);
    }
  }
  if (vnni) {
    std::printf("\nVNNI peak: %.2f G vpdpbusd/s (one thread, from registers)\n", peak / 1e9);
  }
}

// Decode attention over a KV pool of each type, one thread (its least CPU time per call), per
// SIMD level: the kernel cost the types' reads add or save (kv_chunk.h, attention_avx2.cc and
// attention_avx512_int4.cc). ctx 1000: 62 quantised int4 blocks and an 8-position f16 tail.
void BenchKvAttention() {
  const int n_heads = 9, ctx = 1000;
  std::printf(
      "| KV type | ISA | decode ctx %d (9/3 heads, hd 64), 1 thread, CPU time | vs f32 | "
      "prefill of its last 256 | vs f32 |\n",
      ctx);
  std::printf("|---|---|---|---|---|---|\n");
  const std::vector<float> k = RandomFloats(int64_t(ctx) * 192, 11);
  const std::vector<float> v = RandomFloats(int64_t(ctx) * 192, 12);
  const std::vector<float> q = RandomFloats(256 * n_heads * 64, 4);
  std::vector<float> out(256 * n_heads * 64);
  for (cpu::Isa isa : {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
    if (isa > cpu::DetectIsa()) continue;
    CpuBackendOptions o;
    o.threads = 1;
    o.max_isa = isa;
    auto in_place = MakeCpuBackend(o);
    o.int4_in_place = false;
    auto gathered = MakeCpuBackend(o);
    double f32 = 0, f32_pre = 0;
    // Every type, then int4 and int4a gathered (their SIMD reads are in place by default).
    std::vector<std::pair<KvType, bool>> rows;
    for (KvType type : kAllKvTypes) rows.push_back({type, false});
    if (isa != cpu::Isa::kScalar) rows.push_back({KvType::kInt4, true});
    if (isa != cpu::Isa::kScalar) rows.push_back({KvType::kInt4A, true});
    for (const auto& [type, gather] : rows) {
      Backend* b = gather ? gathered.get() : in_place.get();
      const KvGeometry g{16, 3, 64, type};
      const int n_blocks = (ctx + g.block_tokens - 1) / g.block_tokens;
      auto pool = std::move(*b->Allocate(n_blocks * g.block_bytes()));
      std::vector<uint8_t> tail(g.tail_bytes());
      std::vector<int32_t> table(n_blocks);
      // 5 is prime to 63 blocks: a permutation.
      for (int i = 0; i < n_blocks; ++i) table[i] = (i * 5) % n_blocks;
      void* t = tail.empty() ? nullptr : tail.data();
      b->WriteKv(g, pool->data(), table.data(), 0, ctx, k.data(), v.data(), t);
      AttentionSeq s{0, 1, ctx - 1, table.data(), n_blocks, t};
      const double sec = ThreadCpuTimeIt(
          [&] { b->Attention(g, pool->data(), &s, 1, q.data(), n_heads, out.data()); });
      AttentionSeq pre{0, 256, ctx - 256, table.data(), n_blocks, t};
      const double pre_sec = ThreadCpuTimeIt(
          [&] { b->Attention(g, pool->data(), &pre, 1, q.data(), n_heads, out.data()); });
      if (type == KvType::kF32) f32 = sec, f32_pre = pre_sec;
      std::printf("| %s%s | %s | %8.1f us | %5.2fx | %8.2f ms | %5.2fx |\n", KvTypeName(type),
                  gather ? " gathered" : "", cpu::IsaName(isa), sec * 1e6, f32 / sec, pre_sec * 1e3,
                  f32_pre / pre_sec);
    }
  }
}

}  // namespace
}  // namespace kvshare

int main(int argc, char** argv) {
  using namespace kvshare;
  std::vector<int> threads = {1, 2};
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads.clear();
      for (const char* p = argv[i] + 10; *p;) {
        threads.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strncmp(argv[i], "--only=", 7) == 0) {
      only = argv[i] + 7;
    }
  }
  std::printf("%s\n\n", MakeCpuBackend(1)->name().c_str());
  auto want = [&](const char* what) { return only.empty() || only == what; };
  if (want("matvec")) {
    std::printf(
        "Matvec (n = 1): weight GB/s; hot = one weight again and again (cache-resident when\n"
        "small), cold = rotating copies > 160 MiB; limit = plain streaming read, same threads\n\n");
    std::printf("| weight (cols x rows) | thr | path | hot | GB/s | cold | GB/s | limit GB/s |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    BenchMatvec(DType::kQ4_1, 576, 1536, threads);
    BenchMatvec(DType::kQ4_1, 1536, 576, threads);
    BenchMatvec(DType::kQ8_0, 576, 49152, threads);
  }
  if (want("model")) {
    ModelMatmuls model;
    std::printf(
        "\nAll matmuls of a SmolLM2-135M forward pass (30 x q,k,v,o,gate,up,down Q4_1 + "
        "Q8_0 classifier: %.1f MB, %.3f GFLOP/token) for n tokens;\n"
        "limit = tok/s if the weights streamed at the plain-read rate (n = 1)\n\n",
        model.bytes / 1e6, model.flops_per_token / 1e9);
    std::printf("| n | thr | path | time | tok/s | GFLOP/s | GB/s | limit tok/s |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (int t : threads) {
      const double limit = StreamGBps(model.bytes, t) * 1e9 / model.bytes;
      BenchModel(model, t, true, cpu::QuantGemm::kInt8,
                 quick ? std::vector<int>{1, 4, 512} : std::vector<int>{1, 2, 4, 8, 16, 64, 512},
                 limit);
      if (!quick) {
        BenchModel(model, t, false, cpu::QuantGemm::kSgemm, {1, 4, 512}, limit);
        BenchModel(model, t, true, cpu::QuantGemm::kSgemm, {64, 512}, limit);
      }
    }
  }
  if (want("gemm")) {
    std::printf("\n");
    BenchGemm();
  }
  std::printf("\n");
  if (want("sgemm")) {
    for (int t : threads) BenchSgemmF32(t);
  }
  std::printf("\n");
  if (want("attention")) {
    for (int t : threads) BenchAttention(t);
  }
  if (want("attention") || only == "kv-attention") {
    std::printf("\n");
    BenchKvAttention();
  }
  return 0;
}
