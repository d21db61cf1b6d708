// CPU engine throughput: prefill and decode tokens/s at 1 and 2 threads, peak RSS, and for
// decode the achieved weight bytes/s (decode at batch 1 reads every weight once per token).
//
//   build/bench/engine_bench [--json FILE] [--prefill 512] [--decode 128] [--reps 3]
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/engine/engine.h"
#include "common/model/locate.h"
#include "common/model/model.h"
#include "kernels/cpu/cpu_backend.h"

namespace kvshare::bench {
namespace {

// Bytes of weights one decode step reads: every matrix once (the tied embedding is read as
// the classifier; the embedding lookup itself is one row).
int64_t WeightBytesPerToken(const Model& m) {
  int64_t bytes = m.weights().output.nbytes;
  for (const LayerWeights& l : m.weights().layers) {
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down,
                            &l.attn_norm, &l.ffn_norm}) {
      bytes += t->nbytes;
    }
  }
  return bytes;
}

nlohmann::json Measure(const std::string& path, int threads, bool int8, int prefill, int decode,
                       int reps) {
  auto model = Model::Load(path);
  if (!model.ok()) return {{"error", std::string(model.status().message())}};
  // Short-context models (stories260K: 512) get a shorter prompt so prompt + decode fits.
  prefill = std::min(prefill, (*model)->config().max_seq_len - decode);
  EngineOptions o;
  o.max_step_rows = 512;
  o.kv_pool_bytes = int64_t(prefill + decode + 16) * (*model)->config().KvBytesPerToken();
  CpuBackendOptions backend;
  backend.threads = threads;
  backend.matmul.int8_activations = int8;
  auto engine = Engine::Create(**model, MakeCpuBackend(backend), o);
  if (!engine.ok()) return {{"error", std::string(engine.status().message())}};
  Engine& e = **engine;
  const int vocab = (*model)->config().vocab_size;
  std::vector<int32_t> ids(prefill);
  for (int i = 0; i < prefill; ++i) ids[i] = 1 + (i * 7919) % (vocab - 1);
  double best_prefill = 1e30, best_decode = 1e30;
  std::vector<float> logits;
  for (int r = 0; r < reps; ++r) {
    auto seq = e.AddSequence();
    double t0 = Now();
    if (!e.Prefill(*seq, ids, &logits).ok()) return {{"error", "prefill failed"}};
    double t1 = Now();
    for (int t = 0; t < decode; ++t) {
      const int32_t id = 1 + (t * 104729) % (vocab - 1);
      StepInput in{*seq, absl::MakeConstSpan(&id, 1), false};
      if (!e.Step({in}, &logits).ok()) return {{"error", "decode failed"}};
    }
    double t2 = Now();
    e.RemoveSequence(*seq);
    best_prefill = std::min(best_prefill, t1 - t0);
    best_decode = std::min(best_decode, t2 - t1);
  }
  const double decode_tps = decode / best_decode;
  const int64_t wbytes = WeightBytesPerToken(**model);
  return {{"model", (*model)->config().name},
          {"threads", threads},
          {"activations", int8 ? "int8" : "fp32"},
          {"prefill_tokens", prefill},
          {"decode_tokens", decode},
          {"prefill_tok_s", prefill / best_prefill},
          {"decode_tok_s", decode_tps},
          {"weight_bytes_per_token", wbytes},
          {"decode_weight_gb_s", decode_tps * wbytes / 1e9}};
}

}  // namespace
}  // namespace kvshare::bench

int main(int argc, char** argv) {
  using namespace kvshare;
  std::string json_path;
  int prefill = 512, decode = 128, reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--json") json_path = next();
    else if (a == "--prefill") prefill = std::stoi(next());
    else if (a == "--decode") decode = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else {
      std::fprintf(stderr,
                   "usage: engine_bench [--json FILE] [--prefill N] [--decode N] [--reps N]\n"
                   "Prefill/decode tokens/s at 1 and 2 threads for stories260K and "
                   "SmolLM2-135M Q4_1, peak RSS, decode weight GB/s.\n");
      return a == "--help" ? 0 : 2;
    }
  }
  std::vector<std::string> models;
  if (auto p = AssetPath("stories260K.bin"); p.ok()) models.push_back(*p);
  if (auto p = SmolLm2GgufPath(); p.ok()) models.push_back(*p);
  nlohmann::json all = nlohmann::json::array();
  std::printf("%-14s %7s %5s %14s %13s %14s %14s %10s\n", "model", "threads", "act", "prefill tok/s",
              "decode tok/s", "weights MB/tok", "decode GB/s", "peak MiB");
  for (const std::string& path : models) {
    for (int threads : {1, 2}) for (bool int8 : {false, true}) {
      nlohmann::json r = bench::RunIsolated(
          [&] { return bench::Measure(path, threads, int8, prefill, decode, reps); });
      if (r.contains("error")) {
        std::printf("%s: %s\n", path.c_str(), r["error"].get<std::string>().c_str());
        continue;
      }
      std::printf("%-14s %7d %5s %14.1f %13.1f %14.2f %14.2f %10.1f\n",
                  r["model"].get<std::string>().substr(0, 14).c_str(), threads,
                  r["activations"].get<std::string>().c_str(),
                  r["prefill_tok_s"].get<double>(), r["decode_tok_s"].get<double>(),
                  r["weight_bytes_per_token"].get<double>() / 1e6,
                  r["decode_weight_gb_s"].get<double>(), r["peak_rss_mib"].get<double>());
      std::fflush(stdout);
      all.push_back(r);
    }
  }
  bench::WriteJson(json_path, {{"bench", "engine"}, {"results", all}});
  return 0;
}
