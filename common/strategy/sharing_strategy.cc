#include "common/strategy/sharing_strategy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/limits.h"
#include "common/model/model.h"
#include "common/util/excerpt.h"
#include "common/util/file.h"
#include "common/util/json_fields.h"
#include "common/util/sha256.h"
#include "nlohmann/json.hpp"

namespace kvshare {
namespace {

constexpr char kFormat[] = "kvshare.strategy.v1";

std::string KvTypeList(const std::vector<KvType>& types) {
  std::vector<std::string> names;
  names.reserve(types.size());
  for (KvType t : types) names.push_back(KvTypeName(t));
  return absl::StrJoin(names, ",");
}

std::string ContentId(const std::string& fingerprint, const std::vector<int>& kv_source,
                      const std::vector<int>& dropped, const OutputProjections* projections,
                      const std::vector<KvType>& kv_types) {
  std::string text =
      absl::StrCat("kvshare-strategy-v1\n", fingerprint, "\n", absl::StrJoin(kv_source, ","));
  // Strategies without drops or projections keep the id they had before either existed.
  if (!dropped.empty()) absl::StrAppend(&text, "\ndrop ", absl::StrJoin(dropped, ","));
  if (projections != nullptr) absl::StrAppend(&text, "\nprojections ", projections->sha256());
  // A KV plan (issue 17) is content: two plans of one sharing pattern are different versions.
  if (!kv_types.empty()) absl::StrAppend(&text, "\nkv_types ", KvTypeList(kv_types));
  return Sha256Hex(text);
}

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The "output_projections" object of a strategy JSON, its blob read from blob_dir.
// The output_projections fields, read through checked accessors by FromJson.
struct ProjectionsRef {
  std::string type, sha256;
  int rows = 0, cols = 0;
  std::vector<int> layers, substitutes;
};

// The largest projection side accepted from a file (a 70B model's dim is 8192).
constexpr int kMaxProjectionDim = 1 << 15;

absl::StatusOr<std::shared_ptr<const OutputProjections>> ReadProjections(
    const ProjectionsRef& p, const std::string& blob_dir) {
  auto type = ParseProjectionType(p.type);
  if (!type.ok()) return type.status();
  // The blob is found by its hash, never by a path from the file (no traversal).
  if (p.sha256.size() != 64 ||
      p.sha256.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "output_projections.sha256 '%s' is not 64 lower-case hex digits", Excerpt(p.sha256)));
  }
  const std::string file = absl::StrCat("projections-", p.sha256, ".bin");
  if (blob_dir.empty()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "references output projections %s, but no directory to read it from was given (read "
        "the strategy with ReadFile)",
        file));
  }
  const int64_t max_bytes =
      int64_t{4} * p.rows * p.cols * int64_t(p.layers.size()) +
      int64_t{4} * (int64_t(p.rows) * p.rows + p.rows) * int64_t(p.substitutes.size()) + 4096;
  auto blob = ReadFileToString(absl::StrCat(blob_dir, "/", file), max_bytes);
  if (!blob.ok()) return blob.status();
  return OutputProjections::FromBlob(*type, p.rows, p.cols, p.layers, p.substitutes,
                                     std::move(*blob), p.sha256);
}

}  // namespace

double StrategyProvenance::heldout_nll_increase() const {
  if (!has_quality() || !(heldout_ppl > 0) || !(baseline_ppl > 0)) return 0.0;
  return std::log(heldout_ppl / baseline_ppl);
}

SharingStrategy SharingStrategy::Identity(int n_layers, const std::string& model_fingerprint) {
  SharingStrategy s;
  s.kv_source_.resize(n_layers);
  for (int l = 0; l < n_layers; ++l) s.kv_source_[l] = l;
  s.model_fingerprint_ = model_fingerprint;
  s.ComputeId();
  s.provenance_.method = "identity";
  return s;
}

void SharingStrategy::ComputeId() {
  id_ =
      ContentId(model_fingerprint_, kv_source_, attention_dropped_, projections_.get(), kv_types_);
}

bool SharingStrategy::drops(int layer) const {
  return std::binary_search(attention_dropped_.begin(), attention_dropped_.end(), layer);
}

absl::StatusOr<SharingStrategy> SharingStrategy::Create(std::vector<int> kv_source,
                                                        const std::string& model_fingerprint,
                                                        std::vector<int> attention_dropped) {
  auto st = Create(std::move(kv_source), model_fingerprint);
  if (!st.ok() || attention_dropped.empty()) return st;
  std::sort(attention_dropped.begin(), attention_dropped.end());
  const int n = st->n_layers();
  for (size_t i = 0; i < attention_dropped.size(); ++i) {
    const int d = attention_dropped[i];
    if (d < 1 || d >= n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "strategy: attention_dropped names layer %d, must be in [1, %d] (layer 0 owns)", d,
          n - 1));
    }
    if (i > 0 && attention_dropped[i - 1] == d) {
      return absl::InvalidArgumentError(
          absl::StrFormat("strategy: attention_dropped names layer %d twice", d));
    }
    if (st->kv_source_[d] != d) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "strategy: layer %d drops its attention but has kv_source %d (a dropped layer reads "
          "nothing: write %d)",
          d, st->kv_source_[d], d));
    }
    for (int l = d + 1; l < n; ++l) {
      if (st->kv_source_[l] == d) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "strategy: layer %d reads layer %d, whose attention is dropped (it stores no KV)", l,
            d));
      }
    }
  }
  st->attention_dropped_ = std::move(attention_dropped);
  st->ComputeId();
  if (st->provenance_.method == "identity") st->provenance_.method = "manual";
  return st;
}

absl::StatusOr<SharingStrategy> SharingStrategy::WithProjections(
    std::shared_ptr<const OutputProjections> projections) const {
  SharingStrategy st = *this;
  if (projections != nullptr) {
    for (int l : projections->layers()) {
      if (l >= n_layers() || kv_source_[l] >= l) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "strategy: an output projection for layer %d, which is not a sharing layer of "
            "this %d-layer strategy (only a layer reading another layer's cache takes one)",
            l, n_layers()));
      }
    }
    for (int l : projections->substitutes()) {
      if (!drops(l)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "strategy: a linear substitute for layer %d, whose attention this strategy does not "
            "drop (only a dropped layer takes one; attention_dropped is [%s])",
            l, absl::StrJoin(attention_dropped_, ",")));
      }
    }
  }
  st.projections_ = std::move(projections);
  st.ComputeId();
  return st;
}

absl::StatusOr<SharingStrategy> SharingStrategy::WithKvTypes(std::vector<KvType> kv_types) const {
  if (static_cast<int>(kv_types.size()) != n_layers()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy: kv_types has %d entries, the strategy has %d layers (one "
                        "type per layer)",
                        kv_types.size(), n_layers()));
  }
  for (int l = 0; l < n_layers(); ++l) {
    const int t = static_cast<int>(kv_types[l]);
    if (t < 0 || t >= kKvTypeCount) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "strategy: layer %d has kv type %d, not one of f32, f16, int8, int4, k4v3, int4a", l, t));
    }
  }
  // Sources come first (kv_source[l] <= l), so each sharing layer is checked against a
  // source whose own entry was already accepted.
  for (int l = 0; l < n_layers(); ++l) {
    const int s = kv_source_[l];
    if (kv_types[l] != kv_types[s]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "strategy: layer %d reads layer %d's cache, stored as %s, but its kv_types entry is "
          "%s (a sharing layer's type is its source's: write %s)",
          l, s, KvTypeName(kv_types[s]), KvTypeName(kv_types[l]), KvTypeName(kv_types[s])));
    }
  }
  SharingStrategy st = *this;
  st.kv_types_ = std::move(kv_types);
  st.ComputeId();
  return st;
}

double SharingStrategy::KvBytesPerToken(const KvGeometry& g) const {
  int64_t block_bytes = 0;  // one block of every owning layer: exact in integers
  for (int l = 0; l < n_layers(); ++l) {
    if (!owns(l)) continue;
    KvGeometry lg = g;
    lg.type = kv_type(l, g.type);
    block_bytes += lg.block_bytes();
  }
  return static_cast<double>(block_bytes) / g.block_tokens;
}

int64_t SharingStrategy::KvTailBytes(const KvGeometry& g) const {
  int64_t bytes = 0;
  for (int l = 0; l < n_layers(); ++l) {
    if (!owns(l)) continue;
    KvGeometry lg = g;
    lg.type = kv_type(l, g.type);
    bytes += lg.tail_bytes();
  }
  return bytes;
}

absl::StatusOr<SharingStrategy> SharingStrategy::Create(std::vector<int> kv_source,
                                                        const std::string& model_fingerprint) {
  const int n = static_cast<int>(kv_source.size());
  if (n == 0)
    return absl::InvalidArgumentError("strategy: kv_source is empty (need one entry per layer)");
  if (n > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy: kv_source has %d entries; at most %d (the layer limit)", n, kMaxLayers));
  }
  if (model_fingerprint.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy: model_fingerprint \"%s\" is longer than %d bytes",
                        Excerpt(model_fingerprint), kMaxIdBytes));
  }
  if (kv_source[0] != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy: layer 0 must own its KV cache (kv_source[0] = %d, must be 0)", kv_source[0]));
  }
  for (int l = 0; l < n; ++l) {
    const int s = kv_source[l];
    if (s < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("strategy: layer %d has kv_source %d, must be in [0, %d]", l, s, l));
    }
    if (s > l) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "strategy: layer %d reads layer %d, a later layer (a source must be <= the layer)", l,
          s));
    }
    if (kv_source[s] != s) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "strategy: layer %d reads layer %d, which itself shares layer %d (sources must be "
          "roots: write %d)",
          l, s, kv_source[s], kv_source[s]));
    }
  }
  SharingStrategy st;
  st.kv_source_ = std::move(kv_source);
  st.model_fingerprint_ = model_fingerprint;
  st.ComputeId();
  st.provenance_.method = st.is_identity() ? "identity" : "manual";
  return st;
}

absl::Status SharingStrategy::ValidateFor(const ModelConfig& config,
                                          const std::string& model_fingerprint) const {
  if (n_layers() != config.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy: has %d layers, the model '%s' has %d", n_layers(), config.name,
                        config.n_layers));
  }
  if (model_fingerprint_ != model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "strategy: made for model fingerprint %s, the loaded model '%s' is %s",
        model_fingerprint_.substr(0, 16), config.name, model_fingerprint.substr(0, 16)));
  }
  if (projections_ != nullptr && (projections_->rows() != config.dim ||
                                  projections_->cols() != config.n_heads * config.head_dim)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy: output projections of %d x %d, the model '%s' needs dim x n_heads * "
        "head_dim = %d x %d",
        projections_->rows(), projections_->cols(), config.name, config.dim,
        config.n_heads * config.head_dim));
  }
  // Local (sliding-window) and global layers (Gemma 3): ModelConfig::CanReadCacheOf.
  for (int l = 0; l < n_layers(); ++l) {
    const int s = kv_source_[l];
    if (s == l || config.CanReadCacheOf(l, s)) continue;
    const auto kind = [&](int layer) { return config.IsLocalLayer(layer) ? "local" : "global"; };
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy: layer %d (%s) reads layer %d's cache (%s); model '%s' allows sharing only "
        "between layers of the same kind (a global layer may not read a windowed cache, and "
        "local and global layers use different RoPE bases, %g and %g)",
        l, kind(l), s, kind(s), config.name, config.rope_theta_local, config.rope_theta));
  }
  return absl::OkStatus();
}

int SharingStrategy::owning_layers() const {
  int owning = 0;
  for (int l = 0; l < n_layers(); ++l) owning += owns(l);
  return owning;
}

std::string SharingStrategy::CanonicalString() const {
  if (attention_dropped_.empty() && projections_ == nullptr && kv_types_.empty()) {
    return absl::StrJoin(kv_source_, " ");
  }
  std::vector<std::string> parts;
  for (int l = 0; l < n_layers(); ++l) {
    if (drops(l)) {
      parts.push_back(projections_ != nullptr && projections_->SubstituteIndexOf(l) >= 0 ? "x*"
                                                                                         : "x");
    } else if (projections_ != nullptr && projections_->IndexOf(l) >= 0) {
      parts.push_back(absl::StrCat(kv_source_[l], "*"));
    } else if (!kv_types_.empty() && owns(l)) {
      parts.push_back(absl::StrCat(kv_source_[l], ":", KvTypeName(kv_types_[l])));
    } else {
      parts.push_back(absl::StrCat(kv_source_[l]));
    }
  }
  return absl::StrJoin(parts, " ");
}

std::string SharingStrategy::ToJson() const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["model_fingerprint"] = model_fingerprint_;
  j["n_layers"] = n_layers();
  j["kv_source"] = kv_source_;
  if (!attention_dropped_.empty()) j["attention_dropped"] = attention_dropped_;
  if (!kv_types_.empty()) {
    std::vector<std::string> names;
    for (KvType t : kv_types_) names.push_back(KvTypeName(t));
    j["kv_types"] = names;
  }
  if (projections_ != nullptr) {
    j["output_projections"] = {{"type", ProjectionTypeName(projections_->type())},
                               {"rows", projections_->rows()},
                               {"cols", projections_->cols()},
                               {"layers", projections_->layers()},
                               {"sha256", projections_->sha256()},
                               {"file", projections_->BlobFileName()},
                               {"bytes_per_layer", projections_->bytes_per_layer()}};
    if (!projections_->substitutes().empty()) {
      j["output_projections"]["substitutes"] = projections_->substitutes();
      j["output_projections"]["bytes_per_substitute"] = projections_->bytes_per_substitute();
    }
  }
  j["id"] = id_;
  j["owning_layers"] = owning_layers();
  nlohmann::ordered_json p;
  p["method"] = provenance_.method;
  p["order"] = provenance_.order;
  p["threshold"] = provenance_.threshold;
  p["calibration_hash"] = provenance_.calibration_hash;
  p["target_layers"] = provenance_.target_layers;
  p["score"] = provenance_.score;
  p["note"] = provenance_.note;
  if (provenance_.best_of > 0) p["best_of"] = provenance_.best_of;
  if (provenance_.max_nll_increase > 0) p["max_nll_increase"] = provenance_.max_nll_increase;
  if (provenance_.has_quality()) {
    p["quality"] = {{"heldout_ppl", provenance_.heldout_ppl},
                    {"baseline_ppl", provenance_.baseline_ppl},
                    {"heldout_nll_increase", provenance_.heldout_nll_increase()},
                    {"heldout_tokens", provenance_.heldout_tokens},
                    {"heldout_context", provenance_.heldout_context},
                    {"heldout_hash", provenance_.heldout_hash},
                    {"calibration_score", provenance_.calibration_score}};
  }
  j["provenance"] = p;
  // Strings that are not UTF-8 are written with U+FFFD rather than throwing.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

absl::StatusOr<SharingStrategy> SharingStrategy::FromJson(const std::string& text) {
  return FromJson(text, "strategy JSON");
}

absl::StatusOr<SharingStrategy> SharingStrategy::FromJson(const std::string& text,
                                                          const std::string& where,
                                                          const std::string& blob_dir) {
  if (text.size() > kMaxStrategyFileBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d bytes; a strategy is at most %d bytes", where, text.size(), kMaxStrategyFileBytes));
  }
  auto parsed = ParseJsonObject(text, where);
  if (!parsed.ok()) return parsed.status();
  const nlohmann::json& j = *parsed;
  JsonFields f(j, where);
  std::string format, fingerprint, id;
  if (f.String("format", Field::kRequired, kMaxNameBytes, &format) && format != kFormat) {
    f.Fail("format", absl::StrCat("\"", kFormat, "\""));
  }
  f.String("model_fingerprint", Field::kRequired, kMaxIdBytes, &fingerprint);
  // Sources are in [0, kMaxLayers); Create checks each against its layer.
  std::vector<int> kv_source;
  f.IntArray("kv_source", Field::kRequired, kMaxLayers, 0, kMaxLayers - 1, &kv_source);
  int n_layers = 0;
  if (f.Int("n_layers", Field::kOptional, 1, kMaxLayers, &n_layers) &&
      n_layers != static_cast<int>(kv_source.size())) {
    f.Fail("n_layers", absl::StrFormat("kv_source's length, %d", kv_source.size()));
  }
  std::vector<int> dropped;
  f.IntArray("attention_dropped", Field::kOptional, kMaxLayers, 0, kMaxLayers - 1, &dropped);
  std::vector<KvType> kv_types;
  const nlohmann::json* tj = f.Array("kv_types", Field::kOptional, kMaxLayers);
  if (tj != nullptr) {
    for (size_t i = 0; i < tj->size() && f.ok(); ++i) {
      const nlohmann::json& e = (*tj)[i];
      absl::StatusOr<KvType> t = absl::InvalidArgumentError("not a string");
      if (e.is_string()) t = ParseKvType(e.get<std::string>());
      if (!t.ok()) {
        f.Fail("kv_types",
               absl::StrFormat(
                   "an array of \"f32\", \"f16\", \"int8\", \"int4\", \"k4v3\" or \"int4a\" "
                   "(entry %d is not)",
                   i));
      } else {
        kv_types.push_back(*t);
      }
    }
  }
  ProjectionsRef projections;
  const nlohmann::json* pj_out = f.Object("output_projections", Field::kOptional);
  if (pj_out != nullptr) {
    JsonFields of = f.Nested("output_projections", *pj_out);
    of.String("type", Field::kRequired, kMaxNameBytes, &projections.type);
    of.Int("rows", Field::kRequired, 1, kMaxProjectionDim, &projections.rows);
    of.Int("cols", Field::kRequired, 1, kMaxProjectionDim, &projections.cols);
    of.IntArray("layers", Field::kRequired, kMaxLayers, 0, kMaxLayers - 1, &projections.layers);
    of.IntArray("substitutes", Field::kOptional, kMaxLayers, 0, kMaxLayers - 1,
                &projections.substitutes);
    of.String("sha256", Field::kRequired, kMaxIdBytes, &projections.sha256);
  }
  const bool has_id = f.String("id", Field::kOptional, kMaxIdBytes, &id);
  int owning_layers = 0;  // derived (written for people): checked, not used
  const bool has_owning = f.Int("owning_layers", Field::kOptional, 1, kMaxLayers, &owning_layers);
  StrategyProvenance p;
  p.method = "";
  if (const nlohmann::json* pj = f.Object("provenance", Field::kOptional)) {
    JsonFields pf = f.Nested("provenance", *pj);
    constexpr double kHuge = std::numeric_limits<double>::max();
    pf.String("method", Field::kOptional, kMaxNameBytes, &p.method);
    pf.String("order", Field::kOptional, kMaxNameBytes, &p.order);
    pf.Double("threshold", Field::kOptional, -kHuge, kHuge, &p.threshold);
    pf.String("calibration_hash", Field::kOptional, kMaxIdBytes, &p.calibration_hash);
    pf.Int("target_layers", Field::kOptional, 0, kMaxLayers, &p.target_layers);
    pf.Double("score", Field::kOptional, -kHuge, kHuge, &p.score);
    pf.String("note", Field::kOptional, kMaxTextFieldBytes, &p.note);
    pf.Int("best_of", Field::kOptional, 0, std::numeric_limits<int>::max(), &p.best_of);
    pf.Double("max_nll_increase", Field::kOptional, 0.0, kHuge, &p.max_nll_increase);
    if (const nlohmann::json* qj = pf.Object("quality", Field::kOptional)) {
      JsonFields qf = pf.Nested("quality", *qj);
      qf.Double("heldout_ppl", Field::kOptional, 0.0, kHuge, &p.heldout_ppl);
      qf.Double("baseline_ppl", Field::kOptional, 0.0, kHuge, &p.baseline_ppl);
      qf.Int("heldout_tokens", Field::kOptional, int64_t{0}, std::numeric_limits<int64_t>::max(),
             &p.heldout_tokens);
      qf.Int("heldout_context", Field::kOptional, 0, std::numeric_limits<int>::max(),
             &p.heldout_context);
      qf.String("heldout_hash", Field::kOptional, kMaxIdBytes, &p.heldout_hash);
      qf.Double("calibration_score", Field::kOptional, -kHuge, kHuge, &p.calibration_score);
      double derived = 0;  // heldout_nll_increase: written for people, recomputed from the ppls
      qf.Double("heldout_nll_increase", Field::kOptional, -kHuge, kHuge, &derived);
    }
  }
  if (!f.ok()) return f.status();
  auto st = Create(std::move(kv_source), fingerprint, std::move(dropped));
  if (!st.ok()) {
    return absl::Status(st.status().code(),
                        absl::StrCat(where, ": field 'kv_source': ", st.status().message()));
  }
  if (pj_out != nullptr) {
    auto read = ReadProjections(projections, blob_dir);
    if (!read.ok()) {
      return absl::Status(read.status().code(), absl::StrCat(where, ": ", read.status().message()));
    }
    auto with = st->WithProjections(std::move(*read));
    if (!with.ok()) return with.status();
    st = std::move(with);
  }
  if (tj != nullptr) {
    auto with = st->WithKvTypes(std::move(kv_types));
    if (!with.ok()) {
      return absl::Status(with.status().code(),
                          absl::StrCat(where, ": field 'kv_types': ", with.status().message()));
    }
    st = std::move(with);
  }
  if (has_id && id != st->id()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: id \"%s\" does not match the content (model_fingerprint and kv_source; expected %s)",
        where, Excerpt(id), st->id()));
  }
  if (has_owning && owning_layers != st->owning_layers()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: field 'owning_layers' is %d; kv_source has %d owning layers", where,
                        owning_layers, st->owning_layers()));
  }
  if (p.method.empty()) p.method = st->provenance_.method;  // "identity" or "manual"
  st->provenance_ = std::move(p);
  return st;
}

absl::Status SharingStrategy::CheckProvenance(const StrategyProvenance& p,
                                              const std::string& prefix) {
  const struct {
    const char* name;
    const std::string& value;
    size_t limit;
  } fields[] = {{"method", p.method, kMaxNameBytes},
                {"order", p.order, kMaxNameBytes},
                {"calibration_hash", p.calibration_hash, kMaxIdBytes},
                {"note", p.note, kMaxTextFieldBytes},
                {"quality.heldout_hash", p.heldout_hash, kMaxIdBytes}};
  for (const auto& f : fields) {
    if (f.value.size() > f.limit) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.%s \"%s\" is longer than %d bytes, the limit", prefix, f.name,
                          Excerpt(f.value), f.limit));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SharingStrategy> SharingStrategy::ReadFile(const std::string& path) {
  auto text = ReadFileToString(path, kMaxStrategyFileBytes);
  if (!text.ok()) return text.status();
  return FromJson(*text, absl::StrCat("strategy file ", path), DirName(path));
}

absl::Status SharingStrategy::WriteFile(const std::string& path) const {
  if (projections_ != nullptr) {
    absl::Status s = WriteFileAtomically(
        absl::StrCat(DirName(path), "/", projections_->BlobFileName()), projections_->blob());
    if (!s.ok()) return s;
  }
  return WriteFileAtomically(path, ToJson());
}

}  // namespace kvshare
