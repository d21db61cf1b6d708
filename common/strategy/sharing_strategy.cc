#include "common/strategy/sharing_strategy.h"

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

std::string ContentId(const std::string& fingerprint, const std::vector<int>& kv_source) {
  return Sha256Hex(
      absl::StrCat("kvshare-strategy-v1\n", fingerprint, "\n", absl::StrJoin(kv_source, ",")));
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
  s.id_ = ContentId(model_fingerprint, s.kv_source_);
  s.provenance_.method = "identity";
  return s;
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
  st.id_ = ContentId(model_fingerprint, st.kv_source_);
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

std::string SharingStrategy::CanonicalString() const { return absl::StrJoin(kv_source_, " "); }

std::string SharingStrategy::ToJson() const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["model_fingerprint"] = model_fingerprint_;
  j["n_layers"] = n_layers();
  j["kv_source"] = kv_source_;
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

absl::StatusOr<SharingStrategy> SharingStrategy::FromJson(const std::string& text) {
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
  auto st = Create(std::move(kv_source), j["model_fingerprint"].get<std::string>());
  if (!st.ok()) return st.status();
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
  auto st = FromJson(*text);
  if (!st.ok())
    return absl::Status(st.status().code(), absl::StrCat(path, ": ", st.status().message()));
  return st;
}

absl::Status SharingStrategy::WriteFile(const std::string& path) const {
  return WriteFileAtomically(path, ToJson());
}

}  // namespace kvshare
