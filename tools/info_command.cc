// kvshare info: a model's config, size, fingerprint and KV cost, with and without a strategy.
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/commands.h"
#include "tools/session.h"

namespace kvshare::cli {

Runner RegisterInfo(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    double kv_budget_mib = 256;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand("info", "Model config, parameters, fingerprint, KV cost");
  AddModelFlags(sub, &flags->model);
  sub->add_option("--kv-budget-mib", flags->kv_budget_mib,
                  "KV memory budget for the capacity figures, MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  return [flags]() -> int {
    auto session = OpenSession(flags->model, /*need_engine=*/false);
    if (!session.ok()) return Fail(session.status());
    const Model& m = *session->model;
    const ModelConfig& c = m.config();
    const SharingStrategy& st = *session->strategy;
    std::cout << absl::StrFormat(
        "model        %s (%s)\n"
        "format       %s\n"
        "layers       %d\n"
        "dim          %d (ffn %d)\n"
        "heads        %d query, %d kv, head_dim %d\n"
        "vocab        %d\n"
        "context      %d\n"
        "rope_theta   %g\n"
        "parameters   %d\n"
        "fingerprint  %s\n",
        c.name, m.path(), m.format() == ModelFormat::kGguf ? "gguf" : "llama2.c", c.n_layers, c.dim,
        c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len,
        c.rope_theta, m.parameter_count(), m.fingerprint());
    if (c.architecture != "llama") std::cout << "arch         " << c.architecture << "\n";
    if (c.sliding_window > 0) {
      // Gemma 3: which layers are local, and the sharing rule that follows (METHOD.md §1).
      std::string local;
      for (int l = 0; l < c.n_layers; ++l) local += c.IsLocalLayer(l) ? 'L' : 'G';
      std::cout << absl::StrFormat(
          "window       %d positions on local layers (rope_theta %g): %s\n"
          "             (L local, G global; layers share only within a kind)\n",
          c.sliding_window, c.rope_theta_local, local);
    }

    // KV cost: blocks of each owning layer's type (the strategy's KV plan, else --kv-type);
    // capacity counts whole blocks of block_tokens positions, as the paged pool allocates them
    // (a plan mixing types may lose up to a page per type to page granularity: kv_pool.h).
    // Bytes per token are the pool's exactly (SharingStrategy::KvBytesPerToken; int4's
    // per-sequence f16 tail is not in them).
    auto kv_type = ParseKvType(flags->model.kv_type);
    if (!kv_type.ok()) return Fail(kv_type.status());
    KvGeometry g;
    g.block_tokens = flags->model.block_tokens;
    g.n_kv_heads = c.n_kv_heads;
    g.head_dim = c.head_dim;
    g.type = *kv_type;
    absl::Status valid = ValidateKvGeometry(g);
    if (!valid.ok()) return Fail(valid);
    const double per_layer_token = static_cast<double>(g.block_bytes()) / g.block_tokens;
    const int64_t llama_cpp_f16 = 2LL * c.n_layers * c.n_kv_heads * c.head_dim * 2;
    const int64_t budget = static_cast<int64_t>(flags->kv_budget_mib * 1024 * 1024);
    // Bytes of one block_tokens-row of every owning layer: the unit a sequence grows by.
    const int64_t unshared_row = g.block_bytes() * c.n_layers;
    const int64_t strategy_row =
        static_cast<int64_t>(st.KvBytesPerToken(g) * g.block_tokens + 0.5);  // exact integer
    auto capacity = [&](int64_t row_bytes) {
      return row_bytes == 0 ? 0 : budget / row_bytes * flags->model.block_tokens;
    };
    std::cout << absl::StrFormat(
        "strategy     %s (%s)\n"
        "kv_source    %s\n"
        "owning       %d of %d layers (%d share)\n"
        "kv type      %s, %d-token blocks of %d bytes per layer\n",
        st.id(), st.provenance().method, st.CanonicalString(), st.owning_layers(), c.n_layers,
        st.sharing_layers(), KvTypeName(g.type), g.block_tokens, g.block_bytes());
    if (st.has_kv_types()) {
      // The plan overrides --kv-type layer by layer: how many owning layers store each type.
      std::vector<std::string> parts;
      for (KvType t : kAllKvTypes) {
        int n = 0;
        for (int l = 0; l < c.n_layers; ++l) n += st.owns(l) && st.kv_type(l, g.type) == t;
        if (n > 0) parts.push_back(absl::StrFormat("%d x %s", n, KvTypeName(t)));
      }
      std::cout << absl::StrFormat("kv plan      %s (owning layers; --kv-type not used)\n",
                                   absl::StrJoin(parts, ", "));
    }
    std::cout << absl::StrFormat("\n%-16s %16s %12s %22s\n", "", "KV bytes/token", "vs f16",
                                 absl::StrFormat("tokens in %g MiB", flags->kv_budget_mib));
    std::cout << absl::StrFormat("%-16s %16d %12.3f\n", "llama.cpp f16", llama_cpp_f16, 1.0);
    std::cout << absl::StrFormat(
        "%-16s %16g %12.3f %22d\n", "unshared", per_layer_token * c.n_layers,
        per_layer_token * c.n_layers / llama_cpp_f16, capacity(unshared_row));
    std::cout << absl::StrFormat("%-16s %16g %12.3f %22d   (%.3fx capacity)\n",
                                 st.has_kv_types() ? "plan" : "strategy", st.KvBytesPerToken(g),
                                 st.KvBytesPerToken(g) / llama_cpp_f16, capacity(strategy_row),
                                 double(capacity(strategy_row)) / capacity(unshared_row));
    if (st.KvTailBytes(g) > 0) {
      std::cout << absl::StrFormat(
          "%-16s %16d   bytes per sequence (f16 block 0 and partial block)\n", "f16 tails",
          st.KvTailBytes(g));
    }
    return 0;
  };
}

}  // namespace kvshare::cli
