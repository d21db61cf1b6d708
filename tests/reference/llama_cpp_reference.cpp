// llama.cpp's own numbers for a GGUF, for tests/engine/llama_cpp_agreement_test.cc: the mean
// NLL of the first N tokens of a text (BOS + llama.cpp's tokenization, every position scored,
// one causal pass) and the greedy continuation of a few prompts with each step's top1 - top2
// logit margin (the test stops comparing after a near-tie). Prints one JSON object.
// Built and run by tests/reference/llama_cpp_reference.sh against the libllama that
// tests/reference/make_test_models.sh builds; not part of the CMake build.
//
// Usage: llama_cpp_reference MODEL.gguf TEXT_FILE N_TOKENS[,N_TOKENS...] N_GREEDY PROMPT...
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

namespace {

std::string JsonString(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      o += buf;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

std::string Ids(const std::vector<llama_token>& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); ++i) o += (i ? "," : "") + std::to_string(v[i]);
  return o + "]";
}

std::vector<llama_token> Tokenize(const llama_vocab* vocab, const std::string& text) {
  int n = -llama_tokenize(vocab, text.data(), text.size(), nullptr, 0, true, false);
  std::vector<llama_token> ids(n);
  if (llama_tokenize(vocab, text.data(), text.size(), ids.data(), n, true, false) < 0) {
    std::fprintf(stderr, "tokenize failed\n");
    std::exit(1);
  }
  return ids;
}

llama_context* NewContext(llama_model* model, int n_ctx) {
  llama_context_params p = llama_context_default_params();
  p.n_ctx = n_ctx;
  p.n_batch = n_ctx;
  p.n_ubatch = n_ctx;
  p.n_threads = 2;
  p.n_threads_batch = 2;
  llama_context* ctx = llama_init_from_model(model, p);
  if (ctx == nullptr) {
    std::fprintf(stderr, "context failed\n");
    std::exit(1);
  }
  return ctx;
}

// Decodes ids at positions start.. with logits for every row.
void Decode(llama_context* ctx, const std::vector<llama_token>& ids, int start) {
  llama_batch b = llama_batch_init(static_cast<int>(ids.size()), 0, 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    b.token[i] = ids[i];
    b.pos[i] = start + static_cast<int>(i);
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;
  }
  b.n_tokens = static_cast<int>(ids.size());
  if (llama_decode(ctx, b) != 0) {
    std::fprintf(stderr, "decode failed\n");
    std::exit(1);
  }
  llama_batch_free(b);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s MODEL TEXT N_TOKENS[,..] N_GREEDY PROMPT...\n", argv[0]);
    return 2;
  }
  llama_backend_init();
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  llama_model* model = llama_model_load_from_file(argv[1], llama_model_default_params());
  if (model == nullptr) return 1;
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  // A prefix is enough for the counts asked; the last tokens of a cut prefix are not used.
  const std::string text = ss.str().substr(0, 64 * 1024);
  const std::vector<llama_token> all = Tokenize(vocab, text);
  std::printf("{\n \"nll\": [");
  std::string counts = argv[3];
  bool first = true;
  for (size_t pos = 0; pos < counts.size();) {
    size_t end = counts.find(',', pos);
    if (end == std::string::npos) end = counts.size();
    const int n = std::atoi(counts.substr(pos, end - pos).c_str());
    pos = end + 1;
    std::vector<llama_token> ids(all.begin(), all.begin() + n);
    llama_context* ctx = NewContext(model, n);
    Decode(ctx, ids, 0);
    double sum = 0;
    for (int t = 0; t + 1 < n; ++t) {
      const float* lg = llama_get_logits_ith(ctx, t);
      double m = -INFINITY, z = 0;
      for (int v = 0; v < n_vocab; ++v) m = std::fmax(m, lg[v]);
      for (int v = 0; v < n_vocab; ++v) z += std::exp(lg[v] - m);
      sum += m + std::log(z) - lg[ids[t + 1]];
    }
    llama_free(ctx);
    std::printf("%s\n  {\"n_tokens\": %d, \"n_targets\": %d, \"mean_nll\": %.9f, \"ids\": %s}",
                first ? "" : ",", n, n - 1, sum / (n - 1), Ids(ids).c_str());
    first = false;
  }
  std::printf("\n ],\n \"greedy\": [");
  const int n_greedy = std::atoi(argv[4]);
  for (int a = 5; a < argc; ++a) {
    const std::vector<llama_token> prompt = Tokenize(vocab, argv[a]);
    llama_context* ctx = NewContext(model, static_cast<int>(prompt.size()) + n_greedy + 8);
    Decode(ctx, prompt, 0);
    std::vector<llama_token> out;
    std::vector<double> margins;
    std::string piece_text;
    int row = static_cast<int>(prompt.size()) - 1;
    for (int step = 0; step < n_greedy; ++step) {
      const float* lg = llama_get_logits_ith(ctx, row);
      int best = 0, second = -1;
      for (int v = 1; v < n_vocab; ++v) {
        if (lg[v] > lg[best]) {
          second = best;
          best = v;
        } else if (second < 0 || lg[v] > lg[second]) {
          second = v;
        }
      }
      out.push_back(best);
      margins.push_back(lg[best] - lg[second]);
      char buf[256];
      const int len = llama_token_to_piece(vocab, best, buf, sizeof(buf), 0, false);
      if (len > 0) piece_text.append(buf, len);
      if (llama_vocab_is_eog(vocab, best)) break;
      Decode(ctx, {best}, static_cast<int>(prompt.size()) + step);
      row = 0;
    }
    llama_free(ctx);
    std::string m = "[";
    for (size_t i = 0; i < margins.size(); ++i) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%s%.4f", i ? "," : "", margins[i]);
      m += buf;
    }
    std::printf("%s\n  {\"prompt\": %s, \"prompt_ids\": %s, \"new_ids\": %s, \"text\": %s, "
                "\"top1_top2_margin\": %s]}",
                a > 5 ? "," : "", JsonString(argv[a]).c_str(), Ids(prompt).c_str(),
                Ids(out).c_str(), JsonString(piece_text).c_str(), m.c_str());
  }
  std::printf("\n ]\n}\n");
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
