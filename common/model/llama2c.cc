#include "common/model/llama2c.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/model_layout.h"

namespace kvshare {

absl::Status LoadLlama2c(const uint8_t* data, size_t size, ModelConfig* config,
                         ModelWeights* weights) {
  if (size < kLlama2cHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("llama2.c checkpoint: the file has %d bytes, fewer than the %d-byte header",
                        size, kLlama2cHeaderBytes));
  }
  int32_t h[7];
  std::memcpy(h, data, sizeof(h));
  const std::string header = absl::StrFormat(
      "header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, "
      "seq_len %d)",
      h[0], h[1], h[2], h[3], h[4], h[5], h[6]);

  ModelConfig c;
  c.architecture = "llama";
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  // run.c's convention: a negative vocab_size flags an untied classifier at the end.
  c.tied_output = h[5] > 0;
  c.vocab_size = h[5] == INT32_MIN ? 0 : (h[5] < 0 ? -h[5] : h[5]);
  c.max_seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  // run.c hard-codes both; the checkpoint does not store them.
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  if (absl::Status st = ValidateModelConfig(c); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("llama2.c checkpoint: ", header, ": ", st.message()));
  }

  // Sizes in floats; the config bounds keep every product far below 2^63.
  const uint64_t dim = c.dim, hidden = c.hidden_dim, layers = c.n_layers;
  const uint64_t vocab = c.vocab_size, head_dim = c.head_dim;
  const uint64_t kv_dim = uint64_t(c.n_kv_heads) * head_dim;
  const uint64_t floats = vocab * dim                           // token_embedding
                          + layers * dim * 2                    // rms_att, rms_ffn
                          + layers * dim * dim * 2              // wq, wo
                          + layers * kv_dim * dim * 2           // wk, wv
                          + layers * hidden * dim * 3           // w1, w2, w3
                          + dim                                 // rms_final
                          + uint64_t(c.max_seq_len) * head_dim  // freq_cis real + imag
                          + (c.tied_output ? 0 : vocab * dim);  // wcls
  const uint64_t expected = kLlama2cHeaderBytes + floats * sizeof(float);
  if (expected != size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "llama2.c checkpoint: %s implies %u bytes, the file has %d", header, expected, size));
  }

  ModelWeights w;
  w.layers.resize(c.n_layers);
  uint64_t offset = kLlama2cHeaderBytes;
  // Views `count` consecutive F32 tensors of `shape` (GGML order) at the current offset.
  auto take = [&](std::vector<int64_t> shape, int count, auto&& assign) {
    int64_t elems = 1;
    for (int64_t n : shape) elems *= n;
    for (int i = 0; i < count; ++i) {
      Tensor t;
      t.type = DType::kF32;
      t.shape = shape;
      t.data = data + offset;
      t.nbytes = static_cast<size_t>(elems) * sizeof(float);
      offset += t.nbytes;
      assign(i, std::move(t));
    }
  };
  auto per_layer = [&](Tensor LayerWeights::*member, const char* suffix) {
    return [&w, member, suffix](int l, Tensor t) {
      t.name = absl::StrCat("blk.", l, ".", suffix, ".weight");
      w.layers[l].*member = std::move(t);
    };
  };
  const int64_t d = c.dim, hd = c.hidden_dim, kv = static_cast<int64_t>(kv_dim);
  const int L = c.n_layers;
  take({d, c.vocab_size}, 1, [&](int, Tensor t) {
    t.name = "token_embd.weight";
    w.token_embedding = std::move(t);
  });
  take({d}, L, per_layer(&LayerWeights::attn_norm, "attn_norm"));
  take({d, d}, L, per_layer(&LayerWeights::wq, "attn_q"));
  take({d, kv}, L, per_layer(&LayerWeights::wk, "attn_k"));
  take({d, kv}, L, per_layer(&LayerWeights::wv, "attn_v"));
  take({d, d}, L, per_layer(&LayerWeights::wo, "attn_output"));
  take({d}, L, per_layer(&LayerWeights::ffn_norm, "ffn_norm"));
  take({d, hd}, L, per_layer(&LayerWeights::w_gate, "ffn_gate"));
  take({hd, d}, L, per_layer(&LayerWeights::w_down, "ffn_down"));
  take({d, hd}, L, per_layer(&LayerWeights::w_up, "ffn_up"));
  take({d}, 1, [&](int, Tensor t) {
    t.name = "output_norm.weight";
    w.output_norm = std::move(t);
  });
  offset += uint64_t(c.max_seq_len) * head_dim * sizeof(float);  // freq_cis_real, _imag
  if (c.tied_output) {
    w.output = w.token_embedding;
  } else {
    take({d, c.vocab_size}, 1, [&](int, Tensor t) {
      t.name = "output.weight";
      w.output = std::move(t);
    });
  }

  *config = std::move(c);
  *weights = std::move(w);
  return absl::OkStatus();
}

std::string DefaultLlama2cTokenizerPath(const std::string& model_path, int vocab_size) {
  const size_t slash = model_path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : model_path.substr(0, slash);
  return absl::StrCat(dir, "/tok", vocab_size, ".bin");
}

}  // namespace kvshare
