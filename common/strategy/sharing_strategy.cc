#include "common/strategy/sharing_strategy.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model/model.h"
#include "common/util/file.h"
#include "common/util/sha256.h"
#include "nlohmann/json.hpp"

namespace kvshare {
namespace {

constexpr char kFormat[] = "kvshare.strategy.v1";

std::string ContentId(const std::string& fingerprint, const std::vector<int>& kv_source,
                      const std::vector<int>& dropped, const OutputProjections* projections) {
  std::string text =
      absl::StrCat("kvshare-strategy-v1\n", fingerprint, "\n", absl::StrJoin(kv_source, ","));
  // Strategies without drops or projections keep the id they had before either existed.
  if (!dropped.empty()) absl::StrAppend(&text, "\ndrop ", absl::StrJoin(dropped, ","));
  if (projections != nullptr) absl::StrAppend(&text, "\nprojections ", projections->sha256());
  return Sha256Hex(text);
}

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The "output_projections" object of a strategy JSON, its blob read from blob_dir.
absl::StatusOr<std::shared_ptr<const OutputProjections>> ReadProjections(
    const nlohmann::json& p, const std::string& blob_dir) {
  if (!p.is_object() || !p.contains("type") || !p["type"].is_string() || !p.contains("rows") ||
      !p["rows"].is_number_integer() || !p.contains("cols") || !p["cols"].is_number_integer() ||
      !p.contains("layers") || !p["layers"].is_array() || !p.contains("sha256") ||
      !p["sha256"].is_string()) {
    return absl::InvalidArgumentError(
        "strategy JSON: field 'output_projections' needs type (string), rows, cols (ints), "
        "layers (array) and sha256 (string)");
  }
  auto type = ParseProjectionType(p["type"].get<std::string>());
  if (!type.ok()) return type.status();
  std::vector<int> layers;
  for (const auto& l : p["layers"]) {
    if (!l.is_number_integer()) {
      return absl::InvalidArgumentError(
          "strategy JSON: output_projections.layers must hold layer indices");
    }
    layers.push_back(l.get<int>());
  }
  const std::string sha = p["sha256"].get<std::string>();
  // The blob is found by its hash, never by a path from the file (no traversal).
  if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy JSON: output_projections.sha256 '%s' is not 64 lower-case hex digits",
        sha.substr(0, 80)));
  }
  const std::string file = absl::StrCat("projections-", sha, ".bin");
  if (blob_dir.empty()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "strategy JSON: references output projections %s, but no directory to read it from "
        "was given (read the strategy with ReadFile)",
        file));
  }
  auto blob = ReadFileToString(absl::StrCat(blob_dir, "/", file));
  if (!blob.ok()) return blob.status();
  return OutputProjections::FromBlob(*type, p["rows"].get<int>(), p["cols"].get<int>(),
                                     std::move(layers), std::move(*blob), sha);
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
  id_ = ContentId(model_fingerprint_, kv_source_, attention_dropped_, projections_.get());
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
  }
  st.projections_ = std::move(projections);
  st.ComputeId();
  return st;
}

absl::StatusOr<SharingStrategy> SharingStrategy::Create(std::vector<int> kv_source,
                                                        const std::string& model_fingerprint) {
  const int n = static_cast<int>(kv_source.size());
  if (n == 0)
    return absl::InvalidArgumentError("strategy: kv_source is empty (need one entry per layer)");
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
  return absl::OkStatus();
}

int SharingStrategy::owning_layers() const {
  int owning = 0;
  for (int l = 0; l < n_layers(); ++l) owning += owns(l);
  return owning;
}

std::string SharingStrategy::CanonicalString() const {
  if (attention_dropped_.empty() && projections_ == nullptr) return absl::StrJoin(kv_source_, " ");
  std::vector<std::string> parts;
  for (int l = 0; l < n_layers(); ++l) {
    if (drops(l)) {
      parts.push_back("x");
    } else if (projections_ != nullptr && projections_->IndexOf(l) >= 0) {
      parts.push_back(absl::StrCat(kv_source_[l], "*"));
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
  if (projections_ != nullptr) {
    j["output_projections"] = {{"type", ProjectionTypeName(projections_->type())},
                               {"rows", projections_->rows()},
                               {"cols", projections_->cols()},
                               {"layers", projections_->layers()},
                               {"sha256", projections_->sha256()},
                               {"file", projections_->BlobFileName()},
                               {"bytes_per_layer", projections_->bytes_per_layer()}};
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
  return j.dump(2) + "\n";
}

absl::StatusOr<SharingStrategy> SharingStrategy::FromJson(const std::string& text,
                                                          const std::string& blob_dir) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("strategy JSON: not a JSON object");
  }
  if (!j.contains("format") || j["format"] != kFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("strategy JSON: field 'format' must be \"", kFormat, "\""));
  }
  if (!j.contains("model_fingerprint") || !j["model_fingerprint"].is_string()) {
    return absl::InvalidArgumentError(
        "strategy JSON: field 'model_fingerprint' (string) is missing");
  }
  if (!j.contains("kv_source") || !j["kv_source"].is_array()) {
    return absl::InvalidArgumentError(
        "strategy JSON: field 'kv_source' (array of ints) is missing");
  }
  std::vector<int> kv_source;
  for (size_t i = 0; i < j["kv_source"].size(); ++i) {
    const auto& v = j["kv_source"][i];
    if (!v.is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("strategy JSON: kv_source[%d] is not an integer", i));
    }
    kv_source.push_back(v.get<int>());
  }
  if (j.contains("n_layers") && (!j["n_layers"].is_number_integer() ||
                                 j["n_layers"].get<int64_t>() != int64_t(kv_source.size()))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("strategy JSON: n_layers %s disagrees with kv_source's %d entries",
                        j["n_layers"].dump(), kv_source.size()));
  }
  std::vector<int> dropped;
  if (j.contains("attention_dropped")) {
    const auto& d = j["attention_dropped"];
    if (!d.is_array()) {
      return absl::InvalidArgumentError(
          "strategy JSON: field 'attention_dropped' must be an array of layer indices");
    }
    for (size_t i = 0; i < d.size(); ++i) {
      if (!d[i].is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("strategy JSON: attention_dropped[%d] is not an integer", i));
      }
      dropped.push_back(d[i].get<int>());
    }
  }
  auto st =
      Create(std::move(kv_source), j["model_fingerprint"].get<std::string>(), std::move(dropped));
  if (!st.ok()) return st.status();
  if (j.contains("output_projections")) {
    auto projections = ReadProjections(j["output_projections"], blob_dir);
    if (!projections.ok()) return projections.status();
    auto with = st->WithProjections(std::move(*projections));
    if (!with.ok()) return with.status();
    st = std::move(with);
  }
  if (j.contains("id") && (!j["id"].is_string() || j["id"].get<std::string>() != st->id())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy JSON: id %s does not match the content (expected %s)", j["id"].dump(), st->id()));
  }
  if (j.contains("provenance") && j["provenance"].is_object()) {
    const auto& p = j["provenance"];
    StrategyProvenance& out = st->provenance_;
    out.method = p.value("method", out.method);
    out.order = p.value("order", "");
    out.threshold = p.value("threshold", 0.0);
    out.calibration_hash = p.value("calibration_hash", "");
    out.target_layers = p.value("target_layers", 0);
    out.score = p.value("score", 0.0);
    out.note = p.value("note", "");
    out.best_of = p.value("best_of", 0);
    out.max_nll_increase = p.value("max_nll_increase", 0.0);
    if (p.contains("quality") && p["quality"].is_object()) {
      const auto& q = p["quality"];
      out.heldout_ppl = q.value("heldout_ppl", 0.0);
      out.baseline_ppl = q.value("baseline_ppl", 0.0);
      out.heldout_tokens = q.value("heldout_tokens", int64_t{0});
      out.heldout_context = q.value("heldout_context", 0);
      out.heldout_hash = q.value("heldout_hash", "");
      out.calibration_score = q.value("calibration_score", 0.0);
    }
  }
  return st;
}

absl::StatusOr<SharingStrategy> SharingStrategy::ReadFile(const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  auto st = FromJson(*text, DirName(path));
  if (!st.ok())
    return absl::Status(st.status().code(), absl::StrCat(path, ": ", st.status().message()));
  return st;
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
