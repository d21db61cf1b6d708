// What layer sharing buys at a fixed KV budget, on SmolLM2-135M (30 layers): for strategies
// sharing 0, 4, 8 and 12 layers, KV bytes/token (read from the pool), how many 512-token
// sequences fit in the budget, and prefill/decode tokens/s at batch 1 and at the largest
// batch that fits.
//
// The strategies are hand-written (upper odd layers read the layer below: 29->28, 27->26, ...)
// — the point here is memory and speed, which do not depend on which layers share.
//
//   build/bench/kv_sharing_bench [--json FILE] [--budget-mib 256] [--context 512]
//                                [--decode 128] [--threads 2] [--model GGUF]
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "service_runtime/locate.h"

namespace kvshare::bench {
namespace {

std::vector<int> UpperOddLayersShare(int n_layers, int k) {
  std::vector<int> src(n_layers);
  for (int l = 0; l < n_layers; ++l) src[l] = l;
  int shared = 0;
  for (int l = n_layers - 1; l >= 1 && shared < k; l -= 2, ++shared) src[l] = l - 1;
  return src;
}

struct Args {
  std::string model, json;
  double budget_mib = 256;
  int context = 512, decode = 128, threads = 2;
};

nlohmann::json Measure(const Args& a, int k) {
  auto model = Model::Load(a.model);
  if (!model.ok()) return {{"error", std::string(model.status().message())}};
  const ModelConfig& c = (*model)->config();
  auto st = SharingStrategy::Create(UpperOddLayersShare(c.n_layers, k), (*model)->fingerprint());
  if (!st.ok()) return {{"error", std::string(st.status().message())}};
  auto strategy = std::make_shared<const SharingStrategy>(*st);
  EngineOptions o;
  o.kv_pool_bytes = int64_t(a.budget_mib * 1024 * 1024);
  o.max_step_rows = 512;
  auto engine = Engine::Create(**model, MakeCpuBackend(a.threads), o);
  if (!engine.ok()) return {{"error", std::string(engine.status().message())}};
  Engine& e = **engine;
  KvCache& kv = e.kv_cache();
  const int prompt = a.context - a.decode;
  const int64_t fit = kv.total_blocks() / kv.BlocksFor(*strategy, a.context);
  auto ids = [&](int n, int salt) {
    std::vector<int32_t> v(n);
    for (int i = 0; i < n; ++i) v[i] = 1 + (i * 7919 + salt * 104729) % (c.vocab_size - 1);
    return v;
  };

  // Runs `batch` sequences: prefill `prompt` tokens each (up to 512 rows a step), then decode
  // `a.decode` tokens for all of them together. Returns {prefill tok/s, decode tok/s}.
  auto run = [&](int batch) -> std::pair<double, double> {
    std::vector<SeqId> seqs;
    std::vector<std::vector<int32_t>> prompts;
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(*e.AddSequence(strategy));
      prompts.push_back(ids(prompt, b));
    }
    const double t0 = Now();
    for (int b = 0; b < batch; ++b) {
      if (!e.Prefill(seqs[b], prompts[b], nullptr).ok()) return {0, 0};
    }
    const double t1 = Now();
    std::vector<float> logits;
    std::vector<int32_t> next(batch);
    std::vector<StepInput> step(batch);
    for (int t = 0; t < a.decode; ++t) {
      for (int b = 0; b < batch; ++b) {
        next[b] = 1 + (t * 31 + b * 17) % (c.vocab_size - 1);
        step[b] = StepInput{seqs[b], absl::MakeConstSpan(&next[b], 1), false};
      }
      if (!e.Step(step, &logits).ok()) return {0, 0};
    }
    const double t2 = Now();
    for (SeqId s : seqs) e.RemoveSequence(s);
    return {double(batch) * prompt / (t1 - t0), double(batch) * a.decode / (t2 - t1)};
  };

  // KV bytes per token measured from the pool: blocks one full sequence holds.
  auto probe = e.AddSequence(strategy);
  if (!e.Prefill(*probe, ids(kv.geometry().block_tokens, 0), nullptr).ok()) {
    return {{"error", "probe prefill failed"}};
  }
  const int64_t bytes_per_token = kv.used_bytes() / kv.geometry().block_tokens;
  e.RemoveSequence(*probe);

  auto [p1, d1] = run(1);
  auto [pb, db] = run(static_cast<int>(fit));
  return {{"shared_layers", k},
          {"owning_layers", strategy->owning_layers()},
          {"kv_bytes_per_token", bytes_per_token},
          {"seqs_fit", fit},
          {"prefill_tok_s_b1", p1},
          {"decode_tok_s_b1", d1},
          {"prefill_tok_s_max", pb},
          {"decode_tok_s_max", db},
          {"strategy", strategy->CanonicalString()}};
}

}  // namespace
}  // namespace kvshare::bench

int main(int argc, char** argv) {
  using namespace kvshare;
  bench::Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (s == "--json")
      a.json = next();
    else if (s == "--budget-mib")
      a.budget_mib = std::stod(next());
    else if (s == "--context")
      a.context = std::stoi(next());
    else if (s == "--decode")
      a.decode = std::stoi(next());
    else if (s == "--threads")
      a.threads = std::stoi(next());
    else if (s == "--model")
      a.model = next();
    else {
      std::fprintf(stderr,
                   "usage: kv_sharing_bench [--json FILE] [--budget-mib 256] [--context 512] "
                   "[--decode 128] [--threads 2] [--model GGUF]\n");
      return s == "--help" ? 0 : 2;
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
  std::printf("KV budget %.0f MiB, sequences of %d tokens (%d prompt + %d decode), %d threads\n",
              a.budget_mib, a.context, a.context - a.decode, a.decode, a.threads);
  std::printf("%6s %6s %14s %9s %14s %13s %18s %17s %10s\n", "shared", "owning", "KV bytes/tok",
              "seqs fit", "prefill b=1", "decode b=1", "prefill b=max", "decode b=max", "peak MiB");
  nlohmann::json all = nlohmann::json::array();
  for (int k : {0, 4, 8, 12}) {
    nlohmann::json r = bench::RunIsolated([&] { return bench::Measure(a, k); });
    if (r.contains("error")) {
      std::printf("shared %d: %s\n", k, r["error"].get<std::string>().c_str());
      continue;
    }
    std::printf("%6d %6d %14lld %9lld %14.1f %13.1f %18.1f %17.1f %10.1f\n", k,
                r["owning_layers"].get<int>(), r["kv_bytes_per_token"].get<long long>(),
                r["seqs_fit"].get<long long>(), r["prefill_tok_s_b1"].get<double>(),
                r["decode_tok_s_b1"].get<double>(), r["prefill_tok_s_max"].get<double>(),
                r["decode_tok_s_max"].get<double>(), r["peak_rss_mib"].get<double>());
    std::fflush(stdout);
    all.push_back(r);
  }
  bench::WriteJson(a.json, {{"bench", "kv_sharing"},
                            {"budget_mib", a.budget_mib},
                            {"context", a.context},
                            {"threads", a.threads},
                            {"results", all}});
  return 0;
}
