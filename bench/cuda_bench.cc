// Serving speed and KV memory of the CUDA backend on models of named shapes with seeded random
// weights (speed and memory do not depend on the weights' values):
//
//   cuda_bench [--models smollm2-135m,llama2-7b,llama2-13b] [--batches 1,8,32,64,128,256]
//              [--shares 0,12.5,25,37.5] [--prompt 128] [--steps 32] [--kv-budget-gib 16]
//              [--device cuda] [--json FILE]
//
// Per model and share of layers whose KV is shared (each sharing layer reads the layer below
// it): KV bytes per token and the most sequences of prompt+steps tokens a --kv-budget-gib pool
// admits (both read from the engine's pool), prefill tokens/s (all sequences' prompts in steps
// of up to 512 rows), and decode tokens/s at each batch that fits the budget, with the bytes a
// decode step must read (fp16 weights + the KV it attends over) per second, and that as a
// percentage of the device's theoretical peak bandwidth (the GB/s column assumes fp16 weights,
// as the CUDA backend stores them; on the CPU it is not a bandwidth).
//
// Weights are stored Q4_0 in the synthetic file (small on the host) and dequantized to fp16
// on the device, as any GGUF would be. Without a usable device it prints why and exits 0
// with no numbers; `--device cpu` runs the same table on the CPU backend (a smoke test).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/model/model_layout.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/device_backend.h"
#include "tests/model/gguf_builder.h"

namespace kvshare {
namespace {

struct Shape {
  std::string name;
  ModelConfig c;
};

ModelConfig Llama(const std::string& name, int dim, int hidden, int layers, int heads, int kv,
                  int vocab, int ctx, float theta) {
  ModelConfig c;
  c.name = name;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.head_dim = dim / heads;
  c.vocab_size = vocab;
  c.max_seq_len = ctx;
  c.rope_theta = theta;
  return c;
}

const std::vector<Shape>& Shapes() {
  static const std::vector<Shape> kShapes = {
      {"smollm2-135m", Llama("smollm2-135m", 576, 1536, 30, 9, 3, 49152, 8192, 100000.0f)},
      {"llama2-7b", Llama("llama2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0f)},
      {"llama2-13b", Llama("llama2-13b", 5120, 13824, 40, 40, 40, 32000, 4096, 10000.0f)},
  };
  return kShapes;
}

uint16_t Fp16Bits(float f) {  // normal range only (the scales used here)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int exp = int((x >> 23) & 0xff) - 127 + 15;
  const uint32_t mant = (x >> 13) & 0x3ffu;
  return static_cast<uint16_t>(sign | (uint32_t(exp) << 10) | mant);
}

// A llama GGUF of config `c`: norms 1.0 (F32), every matrix Q4_0 with random quants and a
// per-block scale of about 1/sqrt(cols), so activations keep a sane size.
std::unique_ptr<Model> RandomModel(const ModelConfig& c, uint64_t seed) {
  testing::GgufBuilder b;
  b.AddString("general.architecture", "llama");
  b.AddString("general.name", c.name);
  b.AddU32("llama.block_count", c.n_layers);
  b.AddU32("llama.context_length", c.max_seq_len);
  b.AddU32("llama.embedding_length", c.dim);
  b.AddU32("llama.feed_forward_length", c.hidden_dim);
  b.AddU32("llama.attention.head_count", c.n_heads);
  b.AddU32("llama.attention.head_count_kv", c.n_kv_heads);
  b.AddF32("llama.rope.freq_base", c.rope_theta);
  b.AddF32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  b.AddU32("llama.vocab_size", c.vocab_size);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&s] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  for (const TensorSpec& spec : CanonicalTensorSpecs(c)) {
    const int64_t cols = spec.shape[0];
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    std::vector<uint8_t> bytes;
    uint32_t type;
    if (spec.f32_only) {
      type = static_cast<uint32_t>(DType::kF32);
      std::vector<float> ones(n, 1.0f);
      bytes.resize(n * 4);
      std::memcpy(bytes.data(), ones.data(), bytes.size());
    } else {
      type = static_cast<uint32_t>(DType::kQ4_0);
      bytes.resize(size_t(n / 32) * 18);
      const uint16_t d = Fp16Bits(0.5f / std::sqrt(float(cols)));
      for (size_t blk = 0; blk < bytes.size(); blk += 18) {
        bytes[blk] = d & 0xff;
        bytes[blk + 1] = d >> 8;
        const uint64_t r0 = next(), r1 = next();
        std::memcpy(&bytes[blk + 2], &r0, 8);
        std::memcpy(&bytes[blk + 10], &r1, 8);
      }
    }
    b.AddTensor(spec.name + ".weight", std::vector<uint64_t>(spec.shape.begin(), spec.shape.end()),
                type, std::move(bytes));
  }
  auto model = Model::FromBytes(b.Build(), c.name);
  if (!model.ok()) {
    std::fprintf(stderr, "cuda_bench: synthetic %s: %s\n", c.name.c_str(),
                 std::string(model.status().message()).c_str());
    std::exit(1);
  }
  return std::move(*model);
}

// k of L layers share: layers L-1, L-3, ... read the layer below them (which owns).
std::shared_ptr<const SharingStrategy> Sharing(const Model& m, int k) {
  const int L = m.config().n_layers;
  std::vector<int> ks(L);
  for (int l = 0; l < L; ++l) ks[l] = l;
  for (int i = 0; i < k; ++i) ks[L - 1 - 2 * i] = L - 2 - 2 * i;
  auto s = SharingStrategy::Create(ks, m.fingerprint());
  if (!s.ok()) {
    std::fprintf(stderr, "cuda_bench: %s\n", std::string(s.status().message()).c_str());
    std::exit(1);
  }
  return std::make_shared<const SharingStrategy>(*s);
}

struct Flags {
  std::string models = "smollm2-135m,llama2-7b,llama2-13b";
  std::string batches = "1,8,32,64,128,256";
  std::string shares = "0,12.5,25,37.5";
  int prompt = 128;
  int steps = 32;
  double kv_budget_gib = 16;
  std::string device = "cuda";
  std::string json;
};

template <typename T>
std::vector<T> ParseList(const std::string& s, const char* flag) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    double d;
    if (!absl::SimpleAtod(part, &d) || d < 0) {
      std::fprintf(stderr, "%s: \"%s\" is not a non-negative number\n", flag,
                   std::string(part).c_str());
      std::exit(2);
    }
    out.push_back(static_cast<T>(d));
  }
  return out;
}

}  // namespace
}  // namespace kvshare

int main(int argc, char** argv) {
  using namespace kvshare;
  Flags f;
  CLI::App app{
      "cuda_bench: decode/prefill speed and KV memory of the CUDA backend on "
      "named model shapes with random weights"};
  app.add_option("--models", f.models, "Comma-separated: smollm2-135m, llama2-7b, llama2-13b")
      ->capture_default_str();
  app.add_option("--batches", f.batches, "Decode batch sizes")->capture_default_str();
  app.add_option("--shares", f.shares, "Percent of layers sharing KV")->capture_default_str();
  app.add_option("--prompt", f.prompt, "Prompt tokens per sequence")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--steps", f.steps, "Decode steps timed per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--kv-budget-gib", f.kv_budget_gib, "KV pool size (the fixed memory budget)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--device", f.device, "cuda, cuda:N, or cpu (smoke test)")->capture_default_str();
  app.add_option("--json", f.json, "Also write the rows as JSON here");
  CLI11_PARSE(app, argc, argv);

  DeviceOptions dopt;
  dopt.device = f.device;
  auto probe = MakeBackend(dopt);
  if (!probe.ok()) {
    std::printf("cuda_bench: no numbers: %s\n", std::string(probe.status().message()).c_str());
    return 0;
  }
  const DeviceInfo device = probe->info;
  probe->backend.reset();
  std::printf("device: %s; peak DRAM bandwidth %.0f GB/s%s\n", device.Describe().c_str(),
              device.peak_bandwidth_gbs, device.peak_bandwidth_gbs > 0 ? "" : " (unknown)");

  const auto batches = ParseList<int>(f.batches, "--batches");
  const auto shares = ParseList<double>(f.shares, "--shares");
  const int ctx = f.prompt + f.steps;
  const int64_t budget = static_cast<int64_t>(f.kv_budget_gib * (1LL << 30));
  nlohmann::json rows = nlohmann::json::array();

  std::printf("\n%-13s %6s %7s %12s %9s %12s %6s %12s %9s %7s\n", "model", "shared", "layers",
              "KV B/token", "max batch", "prefill t/s", "batch", "decode t/s", "GB/s", "% peak");
  for (absl::string_view name : absl::StrSplit(f.models, ',', absl::SkipEmpty())) {
    const Shape* shape = nullptr;
    for (const Shape& s : Shapes()) {
      if (s.name == name) shape = &s;
    }
    if (shape == nullptr) {
      std::fprintf(stderr, "--models: unknown shape \"%s\"\n", std::string(name).c_str());
      return 2;
    }
    const double t_build = bench::Now();
    std::unique_ptr<Model> model = RandomModel(shape->c, 1);
    std::fprintf(stderr, "[%s: synthetic model built in %.1f s]\n", shape->name.c_str(),
                 bench::Now() - t_build);
    const ModelConfig& c = model->config();
    const int64_t weight_bytes = model->parameter_count() * 2;  // fp16 on the device
    for (double share : shares) {
      const int k = static_cast<int>(std::lround(share / 100.0 * c.n_layers));
      auto strategy = Sharing(*model, k);
      auto backend = MakeBackend(dopt);
      if (!backend.ok()) {
        std::printf("cuda_bench: %s\n", std::string(backend.status().message()).c_str());
        return 1;
      }
      EngineOptions eo;
      eo.kv_pool_bytes = budget;
      eo.max_step_rows = 512;
      auto engine = Engine::Create(*model, std::move(backend->backend), eo);
      if (!engine.ok()) {
        std::printf("cuda_bench: %s: %s\n", shape->name.c_str(),
                    std::string(engine.status().message()).c_str());
        return 1;
      }
      Engine& e = **engine;
      KvCache& kv = e.kv_cache();
      const int64_t per_seq_blocks = kv.BlocksFor(*strategy, ctx);
      const int64_t max_batch = kv.total_blocks() / per_seq_blocks;
      const int64_t kv_per_token =
          int64_t(strategy->owning_layers()) * 2 * c.n_kv_heads * c.head_dim * 4;
      std::mt19937 rng(7);
      for (int batch : batches) {
        nlohmann::json row = {{"model", shape->name},
                              {"device", device.name},
                              {"shared_layers", k},
                              {"layers", c.n_layers},
                              {"share_percent", share},
                              {"kv_bytes_per_token", kv_per_token},
                              {"max_batch_at_budget", max_batch},
                              {"kv_budget_bytes", budget},
                              {"batch", batch}};
        if (batch > max_batch) {
          std::printf("%-13s %5.1f%% %3d/%-3d %12lld %9lld %12s %6d %12s %9s %7s\n",
                      shape->name.c_str(), share, k, c.n_layers, (long long)kv_per_token,
                      (long long)max_batch, "-", batch, "over budget", "-", "-");
          row["skipped"] = "over the KV budget";
          rows.push_back(row);
          continue;
        }
        std::vector<SeqId> seqs;
        std::vector<std::vector<int32_t>> prompts(batch);
        for (int i = 0; i < batch; ++i) {
          auto s = e.AddSequence(strategy);
          if (!s.ok()) return 1;
          seqs.push_back(*s);
          for (int t = 0; t < f.prompt; ++t) prompts[i].push_back(3 + rng() % (c.vocab_size - 3));
        }
        // Prefill: whole prompts packed into steps of up to max_step_rows rows.
        std::vector<float> logits;
        const double t0 = bench::Now();
        const int per_step = std::max(1, eo.max_step_rows / f.prompt);
        for (int i = 0; i < batch; i += per_step) {
          absl::Status st;
          if (f.prompt > eo.max_step_rows) {  // one long prompt, in chunks
            st = e.Prefill(seqs[i], prompts[i], &logits);
          } else {
            std::vector<StepInput> in;
            for (int j = i; j < std::min(batch, i + per_step); ++j) {
              in.push_back({seqs[j], prompts[j], false});
            }
            st = e.Step(in, &logits);
          }
          if (!st.ok()) {
            std::printf("cuda_bench: prefill: %s\n", std::string(st.message()).c_str());
            return 1;
          }
        }
        const double prefill_tps = double(batch) * f.prompt / (bench::Now() - t0);
        // Decode: every sequence one token per step; logits come back each step (a sync).
        std::vector<std::vector<int32_t>> tok(batch, std::vector<int32_t>(1));
        std::vector<StepInput> in(batch);
        double t1 = 0;
        for (int step = 0; step <= f.steps; ++step) {
          if (step == 1) t1 = bench::Now();  // step 0 warms up
          for (int i = 0; i < batch; ++i) {
            tok[i][0] = 3 + rng() % (c.vocab_size - 3);
            in[i] = {seqs[i], tok[i], false};
          }
          absl::Status st = e.Step(in, &logits);
          if (!st.ok()) {
            std::printf("cuda_bench: decode: %s\n", std::string(st.message()).c_str());
            return 1;
          }
        }
        const double decode_s = bench::Now() - t1;
        const double decode_tps = double(batch) * f.steps / decode_s;
        // Bytes one step must read: the weights once, and each sequence's KV so far.
        const double avg_ctx = f.prompt + 1 + f.steps / 2.0;
        const double step_bytes = double(weight_bytes) + double(batch) * avg_ctx * kv_per_token;
        const double gbs = step_bytes * f.steps / decode_s / 1e9;
        const double pct =
            device.peak_bandwidth_gbs > 0 ? 100.0 * gbs / device.peak_bandwidth_gbs : 0;
        const std::string pct_text =
            device.peak_bandwidth_gbs > 0 ? absl::StrFormat("%.1f%%", pct) : std::string("-");
        std::printf("%-13s %5.1f%% %3d/%-3d %12lld %9lld %12.0f %6d %12.1f %9.0f %7s\n",
                    shape->name.c_str(), share, k, c.n_layers, (long long)kv_per_token,
                    (long long)max_batch, prefill_tps, batch, decode_tps, gbs, pct_text.c_str());
        std::fflush(stdout);
        row["prefill_tokens_per_s"] = prefill_tps;
        row["decode_tokens_per_s"] = decode_tps;
        row["decode_read_gb_per_s"] = gbs;
        row["percent_of_peak_bandwidth"] = pct;
        rows.push_back(row);
        for (SeqId s : seqs) e.RemoveSequence(s);
      }
    }
  }
  if (!f.json.empty()) {
    std::ofstream(f.json) << nlohmann::json{{"device", device.Describe()},
                                            {"peak_bandwidth_gbs", device.peak_bandwidth_gbs},
                                            {"prompt", f.prompt},
                                            {"steps", f.steps},
                                            {"rows", rows}}
                                 .dump(2)
                          << "\n";
  }
  return 0;
}
