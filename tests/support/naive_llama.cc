#include "tests/support/naive_llama.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/half.h"

namespace kvshare::testing {
namespace {

const float* F(const Tensor& t) { return static_cast<const float*>(t.data); }

// out[r] = sum_c W[r][c] x[c], W fp32 rows x cols.
Vec MatVec(const Tensor& w, const Vec& x) {
  const int64_t rows = w.rows(), cols = w.cols();
  Vec out(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += double(F(w)[r * cols + c]) * x[c];
    out[r] = s;
  }
  return out;
}

// A stored K or V row ([n_kv_heads][hd]) as a pool of `type` gives it back: fp32 or fp16
// rounding (to nearest even), or int8 symmetric per (position, KV head) with an fp16 scale
// (kernels/kv_type.h), written out here independently of kernels/cpu/kv_codec.
void StoreAs(KvType type, int n_kv_heads, int hd, Vec& x) {
  for (double& v : x) v = static_cast<float>(v);  // the engine computes K/V in fp32
  if (type == KvType::kF16) {
    for (double& v : x) v = cpu::Fp16ToFp32(cpu::Fp32ToFp16(static_cast<float>(v)));
  } else if (type == KvType::kInt8) {
    for (int h = 0; h < n_kv_heads; ++h) {
      double* row = x.data() + size_t(h) * hd;
      float amax = 0;
      for (int i = 0; i < hd; ++i) amax = std::max(amax, std::abs(static_cast<float>(row[i])));
      const float scale = cpu::Fp16ToFp32(cpu::Fp32ToFp16(amax / 127.0f));
      for (int i = 0; i < hd; ++i) {
        const float q =
            scale == 0 ? 0.0f : std::clamp(std::nearbyint(float(row[i]) / scale), -127.0f, 127.0f);
        row[i] = double(q) * scale;
      }
    }
  }
}

Vec RmsNorm(const Vec& x, const Tensor& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / x.size() + eps);
  Vec out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * F(w)[i];
  return out;
}

void Rope(Vec& x, int pos, int n_heads, int hd, double theta) {
  for (int h = 0; h < n_heads; ++h) {
    for (int i = 0; i < hd; i += 2) {
      const double angle = pos * std::pow(theta, -double(i) / hd);
      const double a = x[h * hd + i], b = x[h * hd + i + 1];
      x[h * hd + i] = a * std::cos(angle) - b * std::sin(angle);
      x[h * hd + i + 1] = a * std::sin(angle) + b * std::cos(angle);
    }
  }
}

}  // namespace

NaiveRun NaiveLlamaForward(const Model& m, const NaiveStrategy& strategy,
                           const std::vector<int32_t>& ids, bool with_logits) {
  const std::vector<int>& kv_source = strategy.kv_source;
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  const int T = static_cast<int>(ids.size()), hd = c.head_dim;
  std::vector<Vec> x(T);
  for (int t = 0; t < T; ++t) {
    x[t].assign(F(w.token_embedding) + size_t(ids[t]) * c.dim,
                F(w.token_embedding) + size_t(ids[t] + 1) * c.dim);
  }
  NaiveRun run;
  run.keys.resize(c.n_layers);
  run.values.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const bool dropped =
        std::find(strategy.dropped.begin(), strategy.dropped.end(), l) != strategy.dropped.end();
    const auto wo = strategy.wo.find(l);
    std::vector<Vec> q(T);
    for (int t = 0; t < T; ++t) {
      Vec xb = RmsNorm(x[t], lw.attn_norm, c.norm_eps);
      q[t] = MatVec(lw.wq, xb);
      Rope(q[t], t, c.n_heads, hd, c.rope_theta);
      if (kv_source[l] == l && !dropped) {
        Vec k = MatVec(lw.wk, xb);
        Rope(k, t, c.n_kv_heads, hd, c.rope_theta);
        Vec v = MatVec(lw.wv, xb);
        if (!strategy.kv_types.empty()) {
          StoreAs(strategy.kv_types[l], c.n_kv_heads, hd, k);
          StoreAs(strategy.kv_types[l], c.n_kv_heads, hd, v);
        }
        run.keys[l].push_back(k);
        run.values[l].push_back(v);
      }
    }
    const auto& K = run.keys[dropped ? l : kv_source[l]];
    const auto& V = run.values[dropped ? l : kv_source[l]];
    for (int t = 0; t < T; ++t) {
      Vec att(size_t(c.n_heads) * hd, 0.0);
      if (const auto sub = strategy.substitutes.find(l);
          dropped && sub != strategy.substitutes.end()) {
        const Vec h = RmsNorm(x[t], lw.attn_norm, c.norm_eps);
        const auto& [m, b] = sub->second;
        for (int r = 0; r < c.dim; ++r) {
          double o = b[r];
          for (int k = 0; k < c.dim; ++k) o += m[size_t(r) * c.dim + k] * h[k];
          x[t][r] += o;
        }
      }
      if (!dropped) {  // a dropped layer's attention adds nothing (or its substitute's output)
        for (int h = 0; h < c.n_heads; ++h) {
          const int kvh = h / (c.n_heads / c.n_kv_heads);
          Vec score(t + 1);
          double mx = -1e300;
          for (int s = 0; s <= t; ++s) {
            double d = 0;
            for (int i = 0; i < hd; ++i) d += q[t][h * hd + i] * K[s][kvh * hd + i];
            score[s] = d / std::sqrt(double(hd));
            mx = std::max(mx, score[s]);
          }
          double sum = 0;
          for (double& e : score) sum += (e = std::exp(e - mx));
          for (int s = 0; s <= t; ++s) {
            for (int i = 0; i < hd; ++i) att[h * hd + i] += score[s] / sum * V[s][kvh * hd + i];
          }
        }
        {
          Vec o(c.dim, 0.0);
          if (wo == strategy.wo.end()) {
            o = MatVec(lw.wo, att);
          } else {
            for (int r = 0; r < c.dim; ++r) {
              for (size_t k = 0; k < att.size(); ++k)
                o[r] += wo->second[r * att.size() + k] * att[k];
            }
          }
          for (int i = 0; i < c.dim; ++i) x[t][i] += o[i];
        }
      }
      Vec xb = RmsNorm(x[t], lw.ffn_norm, c.norm_eps);
      Vec g = MatVec(lw.w_gate, xb), u = MatVec(lw.w_up, xb);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      Vec d = MatVec(lw.w_down, g);
      for (int i = 0; i < c.dim; ++i) x[t][i] += d[i];
    }
  }
  run.final_hidden.resize(T);
  if (with_logits) run.logits.resize(T);
  for (int t = 0; t < T; ++t) {
    run.final_hidden[t] = RmsNorm(x[t], w.output_norm, c.norm_eps);
    if (with_logits) run.logits[t] = MatVec(w.output, run.final_hidden[t]);
  }
  return run;
}

}  // namespace kvshare::testing
