// Decode throughput of each KV type (f32, f16, int8, int4) beside f32, shared by engine_bench
// and serving_bench: what reading the compact types costs or saves once the context is long.
//
// Per batch size, one child process loads the model once and builds one engine per type, each
// holding `batch` sequences of `context` cached positions (filled by WriteKv with N(0, 1) K/V:
// what attention reads costs the same whatever the values, and a real prefill of 16 x 1k
// tokens would take minutes here). Then `reps` rounds, each running `steps` decode steps of one
// token per sequence on every engine in turn, the order reversed every other round (ABBA), so
// a burst of foreign load on a shared host hits the types alike. Each type keeps its best
// round's wall time and, separately, its best round's process CPU time (all threads): tokens
// per CPU-second stays comparable when other processes take the cores.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "bench/bench_util.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/util/cpu_time.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/kv_type.h"

namespace kvshare::bench {

struct KvDecodeOptions {
  std::string model;
  int threads = 2;
  int context = 1024;  // cached positions per sequence
  int steps = 16;      // decode steps per round
  int reps = 3;        // rounds
  std::vector<int> batches = {1, 16};
};

// One JSON row per type for one batch size (in the calling process: wrap it in RunIsolated).
inline nlohmann::json MeasureKvDecodeBatch(const KvDecodeOptions& o, int batch) {
  auto model = Model::Load(o.model);
  if (!model.ok()) return {{"error", std::string(model.status().message())}};
  const ModelConfig& c = (*model)->config();
  const int64_t kv_dim = int64_t(c.n_kv_heads) * c.head_dim;
  std::vector<float> k(o.context * kv_dim), v(k.size());
  uint64_t x = 88172645463325252ull;  // xorshift: cheap, fixed noise
  auto noise = [&] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return (static_cast<double>(x >> 11) / 9007199254740992.0 - 0.5) * 3.46;  // var 1
  };
  for (float& f : k) f = static_cast<float>(noise());
  for (float& f : v) f = static_cast<float>(noise());

  struct Setup {
    KvType type;
    std::unique_ptr<Engine> engine;
    std::vector<SeqId> seqs;
    double best_wall = 1e30, best_cpu = 1e30;
  };
  std::vector<Setup> setups;
  for (KvType type : kAllKvTypes) {
    EngineOptions eo;
    eo.kv_type = type;
    eo.max_step_rows = std::max(64, batch);
    eo.default_pool_tokens = int64_t(batch) * (o.context + o.steps * o.reps + 32);
    CpuBackendOptions backend;
    backend.threads = o.threads;
    auto engine = Engine::Create(**model, MakeCpuBackend(backend), eo);
    if (!engine.ok()) return {{"error", std::string(engine.status().message())}};
    Setup s{type, std::move(*engine), {}};
    Engine& e = *s.engine;
    KvCache& kv = e.kv_cache();
    for (int b = 0; b < batch; ++b) {
      auto seq = e.AddSequence();
      if (!seq.ok()) return {{"error", std::string(seq.status().message())}};
      absl::Status st = kv.Reserve(*seq, o.context);
      if (!st.ok()) return {{"error", std::string(st.message())}};
      for (int l = 0; l < c.n_layers; ++l) {
        e.backend().WriteKv(kv.LayerGeometry(l), kv.pool(), kv.TableForLayer(*seq, l).data(), 0,
                            o.context, k.data(), v.data(), kv.TailForLayer(*seq, l));
      }
      kv.set_length(*seq, o.context);
      s.seqs.push_back(*seq);
    }
    setups.push_back(std::move(s));
  }
  std::vector<float> logits;
  std::vector<int32_t> next(batch);
  std::vector<StepInput> in(batch);
  for (int r = 0; r < o.reps; ++r) {
    for (size_t i = 0; i < setups.size(); ++i) {
      Setup& s = setups[r % 2 == 0 ? i : setups.size() - 1 - i];
      const double t0 = Now(), c0 = ProcessCpuSeconds();
      for (int t = 0; t < o.steps; ++t) {
        for (int b = 0; b < batch; ++b) {
          next[b] = 1 + (t * 104729 + b * 13) % (c.vocab_size - 1);
          in[b] = StepInput{s.seqs[b], absl::MakeConstSpan(&next[b], 1), false};
        }
        if (!s.engine->Step(in, &logits).ok()) return {{"error", "decode failed"}};
      }
      s.best_wall = std::min(s.best_wall, Now() - t0);
      s.best_cpu = std::min(s.best_cpu, ProcessCpuSeconds() - c0);
    }
  }
  nlohmann::json rows = nlohmann::json::array();
  for (const Setup& s : setups) {
    const double tokens = double(batch) * o.steps;
    rows.push_back(
        {{"kv_type", KvTypeName(s.type)},
         {"threads", o.threads},
         {"batch", batch},
         {"context", o.context},
         {"steps", o.steps},
         {"reps", o.reps},
         {"kv_bytes_per_token", s.engine->kv_cache().bytes_per_token_per_layer() * c.n_layers},
         {"decode_tok_s", tokens / s.best_wall},
         {"decode_tok_per_cpu_s", tokens / s.best_cpu}});
  }
  return {{"rows", rows}};
}

// Measures every batch size (each in its own child process), prints the table and returns
// the rows: per type and batch, tok/s and tok/CPU-s, each beside f32's.
inline nlohmann::json RunKvDecodeTable(const KvDecodeOptions& o) {
  std::printf(
      "\ndecode with %d cached positions per sequence, by KV type, %d thread(s), best of %d "
      "interleaved rounds of %d steps:\n",
      o.context, o.threads, o.reps, o.steps);
  std::printf("%-6s %12s", "kv", "bytes/token");
  for (size_t i = 0; i < o.batches.size(); ++i) {
    std::printf(" | %5s %8s %6s %9s %6s", "batch", "tok/s", "vs f32", "tok/CPU-s", "vs f32");
  }
  std::printf("\n");
  std::fflush(stdout);
  nlohmann::json all = nlohmann::json::array();
  std::vector<nlohmann::json> per_batch;
  for (int batch : o.batches) {
    nlohmann::json r = RunIsolated([&] { return MeasureKvDecodeBatch(o, batch); });
    if (r.contains("error")) {
      std::printf("batch %d: error: %s\n", batch, r["error"].get<std::string>().c_str());
      per_batch.push_back(nlohmann::json::array());
      continue;
    }
    for (auto& row : r["rows"]) row["peak_rss_mib"] = r["peak_rss_mib"];
    per_batch.push_back(r["rows"]);
  }
  for (size_t t = 0; t < std::size(kAllKvTypes); ++t) {
    std::printf("%-6s", KvTypeName(kAllKvTypes[t]));
    bool bytes_printed = false;
    for (const nlohmann::json& rows : per_batch) {
      if (rows.size() != std::size(kAllKvTypes)) continue;
      const nlohmann::json& row = rows[t];
      const nlohmann::json& f32 = rows[0];
      if (!bytes_printed) std::printf(" %12.0f", row["kv_bytes_per_token"].get<double>());
      bytes_printed = true;
      const double tps = row["decode_tok_s"], cps = row["decode_tok_per_cpu_s"];
      const double f32_tps = f32["decode_tok_s"], f32_cps = f32["decode_tok_per_cpu_s"];
      std::printf(" | %5d %8.1f %5.2fx %9.1f %5.2fx", row["batch"].get<int>(), tps, tps / f32_tps,
                  cps, cps / f32_cps);
      nlohmann::json out = row;
      out["vs_f32"] = tps / f32_tps;
      out["cpu_vs_f32"] = cps / f32_cps;
      all.push_back(out);
    }
    std::printf("\n");
  }
  std::fflush(stdout);
  return all;
}

}  // namespace kvshare::bench
