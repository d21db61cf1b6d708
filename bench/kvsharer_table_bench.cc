// The KVSharer paper's table on our models: perplexity at 0 and k shared layers for strategies
// found by the greedy search with the dissimilar (the method), similar and random pair orders,
// with the KV bytes per token read from the pool and the search wall time; plus the time of the
// search at a 25% target (docs/METHOD.md §3: the paper's search takes about a minute).
//
//   build/bench/kvsharer_table_bench [--json FILE] [--threads 2] [--eval-tokens 16384]
//                                    [--context 512] [--seed 0] [--models smollm2,stories]
//
// SmolLM2-135M: calibration on the first qualifying lines of WikiText-2 test, perplexity on
// WikiText-2 test text that starts after the last calibration line (disjoint); k = 4, 8, 12 of
// 30. stories260K: the same on tinystories-sample.txt; k = 1, 2, 3 of 5.
// One search per order runs to the largest k; the strategies at the smaller k are its first
// acceptances (the greedy run to k passes through exactly those: StrategyAfterAccepts).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "common/engine/engine.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"
#include "search_service/calibration.h"
#include "search_service/strategy_search.h"
#include "service_runtime/locate.h"

namespace kvshare::bench {
namespace {

struct Flags {
  std::string json;
  int threads = 2;
  int eval_tokens = 16384;
  int context = 512;
  uint64_t seed = 0;
  std::vector<std::string> models = {"smollm2", "stories"};
};

struct ModelSpec {
  std::string name;
  std::string path;
  std::string text_file;    // calibration and evaluation text
  std::vector<int> shared;  // k values after 0
};

struct Row {
  std::string order;
  int shared = 0;
  std::vector<int> kv_source;
  int owning = 0;
  double kv_bytes_per_token = 0;
  double perplexity = 0, mean_nll = 0;
  int64_t tokens = 0;
  double score = 1;
  double search_seconds = 0;
  bool available = true;
};

// Bytes of KV the pool holds per token for a strategy, measured: a 64-token sequence is
// prefilled and the pool's used bytes divided by 64 (64 is a multiple of the block size).
absl::StatusOr<double> MeasureKvBytesPerToken(Engine& engine,
                                              std::shared_ptr<const SharingStrategy> st,
                                              const std::vector<int32_t>& ids) {
  auto seq = engine.AddSequence(std::move(st));
  if (!seq.ok()) return seq.status();
  absl::Status s = engine.Prefill(*seq, absl::MakeConstSpan(ids).subspan(0, 64), nullptr);
  const double bytes = double(engine.kv_cache().used_bytes()) / 64;
  engine.RemoveSequence(*seq);
  if (!s.ok()) return s;
  return bytes;
}

absl::StatusOr<nlohmann::json> RunModel(const ModelSpec& spec, const Flags& flags,
                                        std::vector<Row>* rows) {
  auto model = Model::Load(spec.path);
  if (!model.ok()) return model.status();
  const Model& m = **model;
  const ModelConfig& c = m.config();
  auto tok = LoadTokenizerForModel(m, "");
  if (!tok.ok()) return tok.status();
  auto text = ReadFileToString(spec.text_file);
  if (!text.ok()) return text.status();

  // Calibration: the method's defaults (30 lines of >= 64 tokens).
  auto calibration = BuildCalibrationSet(*text, **tok, CalibrationOptions{}, spec.text_file);
  if (!calibration.ok()) return calibration.status();
  const int last_line = calibration->source_lines.back();
  // Evaluation text: everything after the last calibration line.
  size_t offset = 0;
  for (int line = 0; line < last_line && offset != std::string::npos; ++line) {
    offset = text->find('\n', offset);
    if (offset != std::string::npos) ++offset;
  }
  if (offset == std::string::npos) return absl::OutOfRangeError("no text after calibration");
  // Tokenise a generous prefix only (WikiText-2 is ~1.3 MB), cut at a line end.
  std::string eval_text = text->substr(offset, size_t(flags.eval_tokens) * 16);
  if (eval_text.size() < text->size() - offset) eval_text.resize(eval_text.rfind('\n') + 1);
  std::vector<int32_t> ids = (*tok)->Encode(eval_text, /*add_bos=*/false);
  if (int(ids.size()) > flags.eval_tokens) ids.resize(flags.eval_tokens);
  if ((*tok)->bos_id() >= 0) ids.insert(ids.begin(), (*tok)->bos_id());
  if (ids.size() < 65) return absl::OutOfRangeError("evaluation slice too short");

  EngineOptions eo;
  eo.max_step_rows = flags.context;
  eo.kv_pool_bytes = int64_t(flags.context + 64) * c.KvBytesPerToken();
  auto engine = Engine::Create(m, MakeCpuBackend(flags.threads), eo);
  if (!engine.ok()) return engine.status();
  Engine& e = **engine;

  auto evaluate = [&](Row& row) -> absl::Status {
    auto st = SharingStrategy::Create(row.kv_source, m.fingerprint());
    if (!st.ok()) return st.status();
    auto shared_st = std::make_shared<const SharingStrategy>(std::move(*st));
    row.owning = shared_st->owning_layers();
    auto kv = MeasureKvBytesPerToken(e, shared_st, ids);
    if (!kv.ok()) return kv.status();
    row.kv_bytes_per_token = *kv;
    PerplexityOptions po;
    po.context = flags.context;
    po.stride = flags.context;
    po.strategy = shared_st;
    const double t0 = Now();
    auto ppl = EvaluatePerplexity(e, ids, po);
    if (!ppl.ok()) return ppl.status();
    row.perplexity = ppl->perplexity();
    row.mean_nll = ppl->mean_nll;
    row.tokens = ppl->tokens_scored;
    std::fprintf(stderr, "  %-10s k=%-2d ppl %.4f (%.1f s)\n", row.order.c_str(), row.shared,
                 row.perplexity, Now() - t0);
    return absl::OkStatus();
  };

  nlohmann::json j;
  j["model"] = c.name;
  j["fingerprint"] = m.fingerprint();
  j["n_layers"] = c.n_layers;
  j["calibration"] = {{"file", spec.text_file},
                      {"samples", calibration->samples},
                      {"tokens", calibration->tokens},
                      {"hash", calibration->hash},
                      {"lines", calibration->source_lines}};
  j["eval"] = {{"file", spec.text_file},
               {"first_line", last_line + 1},
               {"tokens", ids.size()},
               {"context", flags.context},
               {"stride", flags.context}};

  std::fprintf(stderr, "%s: calibration lines %d..%d, evaluation from line %d, %zu tokens\n",
               c.name.c_str(), calibration->source_lines.front(), last_line, last_line + 1,
               ids.size());
  Row base;
  base.order = "none";
  base.kv_source.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) base.kv_source[l] = l;
  absl::Status s = evaluate(base);
  if (!s.ok()) return s;
  rows->push_back(base);

  // The speed target: a search to 25% of the layers, dissimilar order, timed on its own.
  {
    SelectionOptions paper;  // kvsharer, best of 1
    GreedyOptions& o = paper.greedy;
    o.target_layers = std::max(1, int(std::lround(0.25 * c.n_layers)));
    auto r = RunStrategySearch(m, e.backend(), *calibration, paper);
    if (!r.ok()) return r.status();
    j["search_25pct"] = {{"target_layers", o.target_layers},
                         {"seconds", r->total_seconds},
                         {"calibration_seconds", r->calibration_seconds},
                         {"greedy_seconds", r->greedy_seconds},
                         {"pairs_scored", r->selection.greedy.trace.size()},
                         {"kv_source", r->selection.greedy.kv_source}};
    std::fprintf(stderr, "  search to %d of %d layers (25%%): %.2f s\n", o.target_layers,
                 c.n_layers, r->total_seconds);
  }

  const int k_max = spec.shared.back();
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    SelectionOptions paper;  // kvsharer, best of 1
    GreedyOptions& o = paper.greedy;
    o.order = order;
    o.seed = flags.seed;
    o.target_layers = k_max;
    auto r = RunStrategySearch(m, e.backend(), *calibration, paper);
    if (!r.ok()) return r.status();
    nlohmann::json trace = nlohmann::json::array();
    for (const PairTrial& t : r->selection.greedy.trace) {
      trace.push_back({{"i", t.i},
                       {"j", t.j},
                       {"distance", t.distance},
                       {"score", t.score},
                       {"accepted", t.accepted}});
    }
    j["searches"].push_back({{"order", PairOrderName(order)},
                             {"seed", flags.seed},
                             {"target_layers", k_max},
                             {"seconds", r->total_seconds},
                             {"stop", StopReasonName(r->selection.greedy.stop)},
                             {"accepted", r->selection.greedy.accepted},
                             {"trace", trace}});
    std::fprintf(stderr, "  search %s to %d: %.2f s, %zu pairs scored, %s\n", PairOrderName(order),
                 k_max, r->total_seconds, r->selection.greedy.trace.size(),
                 StopReasonName(r->selection.greedy.stop));
    for (int k : spec.shared) {
      Row row;
      row.order = PairOrderName(order);
      row.shared = k;
      row.search_seconds = r->total_seconds;
      auto ks = StrategyAfterAccepts(r->selection.greedy.trace, c.n_layers, k);
      if (!ks.ok()) {  // the pairs ran out before k acceptances
        row.available = false;
        rows->push_back(row);
        continue;
      }
      row.kv_source = *ks;
      int accepts = 0;
      for (const PairTrial& t : r->selection.greedy.trace) {
        if (t.accepted && ++accepts == k) row.score = t.score;
      }
      s = evaluate(row);
      if (!s.ok()) return s;
      rows->push_back(row);
    }
  }
  nlohmann::json jrows = nlohmann::json::array();
  for (const Row& row : *rows) {
    nlohmann::json jr = {
        {"order", row.order}, {"shared", row.shared}, {"available", row.available}};
    if (row.available) {
      jr["kv_source"] = row.kv_source;
      jr["owning"] = row.owning;
      jr["kv_bytes_per_token"] = row.kv_bytes_per_token;
      jr["kv_fraction"] = row.kv_bytes_per_token / rows->front().kv_bytes_per_token;
      jr["perplexity"] = row.perplexity;
      jr["mean_nll"] = row.mean_nll;
      jr["tokens_scored"] = row.tokens;
      jr["score"] = row.score;
      jr["search_seconds"] = row.search_seconds;
    }
    jrows.push_back(jr);
  }
  j["rows"] = jrows;
  return j;
}

void PrintTable(const std::string& model, int n_layers, const std::vector<Row>& rows,
                const nlohmann::json& j) {
  std::string file = j["eval"]["file"].get<std::string>();
  file = file.substr(file.find_last_of('/') + 1);
  std::printf(
      "\n%s (%d layers): perplexity on %s from line %d (after the calibration lines), "
      "context %d, %d tokens scored\n",
      model.c_str(), n_layers, file.c_str(), j["eval"]["first_line"].get<int>(),
      j["eval"]["context"].get<int>(), int(rows.front().tokens));
  std::printf("%-11s %6s %6s %12s %7s %10s %9s %10s\n", "order", "shared", "owning", "KV B/token",
              "KV %", "perplexity", "score", "search s");
  for (const Row& r : rows) {
    if (!r.available) {
      std::printf("%-11s %6d %6s %12s %7s %10s %9s %10.2f  (pairs ran out before %d accepts)\n",
                  r.order.c_str(), r.shared, "-", "-", "-", "-", "-", r.search_seconds, r.shared);
      continue;
    }
    std::printf("%-11s %6d %6d %12.0f %6.1f%% %10.4f %9.4f %10s\n", r.order.c_str(), r.shared,
                r.owning, r.kv_bytes_per_token,
                100 * r.kv_bytes_per_token / rows.front().kv_bytes_per_token, r.perplexity, r.score,
                r.order == "none" ? "-" : absl::StrFormat("%.2f", r.search_seconds).c_str());
  }
  const auto& s25 = j["search_25pct"];
  std::printf("search to %d of %d layers (25%%, dissimilar): %.2f s (limit 60 s)\n",
              s25["target_layers"].get<int>(), n_layers, s25["seconds"].get<double>());
  std::printf("(one search per order to the largest k; smaller k are its first acceptances)\n");
  // The paper's claim: sharing dissimilar layers beats sharing similar ones.
  for (const Row& d : rows) {
    if (d.order != "dissimilar" || !d.available) continue;
    for (const Row& s : rows) {
      if (s.order == "similar" && s.shared == d.shared && s.available) {
        std::printf("k=%-2d dissimilar %.4f vs similar %.4f: %s\n", d.shared, d.perplexity,
                    s.perplexity,
                    d.perplexity < s.perplexity ? "dissimilar better" : "similar better");
      }
    }
  }
}

int Main(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--json") {
      flags.json = next();
    } else if (a == "--threads") {
      flags.threads = std::atoi(next().c_str());
    } else if (a == "--eval-tokens") {
      flags.eval_tokens = std::atoi(next().c_str());
    } else if (a == "--context") {
      flags.context = std::atoi(next().c_str());
    } else if (a == "--seed") {
      flags.seed = std::strtoull(next().c_str(), nullptr, 10);
    } else if (a == "--models") {
      flags.models = absl::StrSplit(next(), ',');
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json FILE] [--threads N] [--eval-tokens N] [--context N] "
                   "[--seed S] [--models smollm2,stories]\n",
                   argv[0]);
      return 2;
    }
  }
  if (flags.eval_tokens < 64 || flags.context < 16 || flags.threads < 1) {
    std::fprintf(stderr, "--eval-tokens must be >= 64, --context >= 16, --threads >= 1\n");
    return 2;
  }
  nlohmann::json out;
  out["threads"] = flags.threads;
  for (const std::string& name : flags.models) {
    ModelSpec spec;
    if (name == "smollm2") {
      auto path = SmolLm2GgufPath();
      auto text = AssetPath("wikitext-2-raw-test.txt");
      if (!path.ok() || !text.ok()) {
        std::fprintf(stderr, "smollm2: %s\n",
                     std::string((!path.ok() ? path.status() : text.status()).message()).c_str());
        return 1;
      }
      spec = {"smollm2", *path, *text, {4, 8, 12}};
    } else if (name == "stories") {
      auto path = AssetPath("stories260K.bin");
      auto text = AssetPath("tinystories-sample.txt");
      if (!path.ok() || !text.ok()) {
        std::fprintf(stderr, "stories: %s\n",
                     std::string((!path.ok() ? path.status() : text.status()).message()).c_str());
        return 1;
      }
      spec = {"stories", *path, *text, {1, 2, 3}};
    } else {
      std::fprintf(stderr, "unknown model '%s' (smollm2, stories)\n", name.c_str());
      return 2;
    }
    std::vector<Row> rows;
    auto j = RunModel(spec, flags, &rows);
    if (!j.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), std::string(j.status().message()).c_str());
      return 1;
    }
    PrintTable((*j)["model"].get<std::string>(), (*j)["n_layers"].get<int>(), rows, *j);
    std::fflush(stdout);
    out["models"].push_back(*j);
  }
  WriteJson(flags.json, out);
  return 0;
}

}  // namespace
}  // namespace kvshare::bench

int main(int argc, char** argv) { return kvshare::bench::Main(argc, argv); }
