#include "search_service/calibration.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "common/model/model.h"
#include "common/util/file.h"
#include "common/util/sha256.h"

namespace kvshare {
namespace {

std::string HashIds(int samples, int tokens, const std::vector<int32_t>& ids) {
  Sha256 h;
  h.Update(absl::StrFormat("kvshare-calibration-v1 %d %d\n", samples, tokens));
  std::string bytes(ids.size() * 4, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(ids[i]);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<char>((u >> (8 * b)) & 0xff);
  }
  h.Update(bytes);
  return h.HexDigest();
}

}  // namespace

absl::StatusOr<CalibrationSet> BuildCalibrationSet(std::string_view text,
                                                   const Tokenizer& tokenizer,
                                                   const CalibrationOptions& options,
                                                   const std::string& source) {
  if (options.samples < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("calibration: samples %d must be >= 1", options.samples));
  }
  if (options.tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("calibration: tokens %d must be >= 1", options.tokens));
  }
  const bool bos = tokenizer.add_bos_by_default() && tokenizer.bos_id() >= 0;
  CalibrationSet set;
  set.samples = options.samples;
  set.tokens = options.tokens;
  set.ids.reserve(size_t(options.samples) * options.tokens);
  // Every line is looked at (even after N are found) so that a short text can say how many
  // lines qualify.
  int qualifying = 0, lines = 0, lines_with_tokens = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++lines;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (qualifying >= options.samples && lines_with_tokens > 0) break;
    std::vector<int32_t> ids = tokenizer.Encode(line, bos);
    const int content = static_cast<int>(ids.size()) - (bos ? 1 : 0);
    if (content > 0) ++lines_with_tokens;
    if (static_cast<int>(ids.size()) < options.tokens) continue;
    ++qualifying;
    if (qualifying > options.samples) continue;
    set.ids.insert(set.ids.end(), ids.begin(), ids.begin() + options.tokens);
    set.source_lines.push_back(lines);
  }
  if (lines_with_tokens == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: none of its %d lines tokenises to any token; a calibration text needs %d lines "
        "of at least %d tokens",
        source, lines, options.samples, options.tokens));
  }
  if (qualifying < options.samples) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: only %d of its %d lines tokenise to at least %d tokens%s; the calibration set "
        "needs %d such lines",
        source, qualifying, lines, options.tokens, bos ? " (BOS counted)" : "", options.samples));
  }
  set.hash = HashIds(set.samples, set.tokens, set.ids);
  return set;
}

absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::string& path,
                                                  const Tokenizer& tokenizer,
                                                  const CalibrationOptions& options) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  if (text->empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("calibration file %s is empty (0 bytes)", path));
  }
  return BuildCalibrationSet(*text, tokenizer, options, "calibration file " + path);
}

KvAverager::KvAverager(const ModelConfig& config, int tokens) {
  sum_.n_layers = config.n_layers;
  sum_.tokens = tokens;
  sum_.n_kv_heads = config.n_kv_heads;
  sum_.head_dim = config.head_dim;
  const size_t floats = size_t(tokens) * config.n_kv_heads * config.head_dim;
  sum_.k.assign(config.n_layers, std::vector<double>(floats, 0.0));
  sum_.v.assign(config.n_layers, std::vector<double>(floats, 0.0));
  inputs_seen_.assign(config.n_layers, 0);
}

void KvAverager::OnKv(int layer, int /*input*/, const float* k, const float* v, int n) {
  if (n != sum_.tokens) {
    partial_input_ = true;
    return;
  }
  std::vector<double>& ks = sum_.k[layer];
  std::vector<double>& vs = sum_.v[layer];
  for (size_t i = 0; i < ks.size(); ++i) {
    ks[i] += k[i];
    vs[i] += v[i];
  }
  ++inputs_seen_[layer];
}

absl::StatusOr<AveragedKv> KvAverager::Result() const {
  if (partial_input_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "kv averager: an input did not have exactly %d rows from position 0", sum_.tokens));
  }
  const int n = sum_.n_layers > 0 ? inputs_seen_[0] : 0;
  for (int l = 0; l < sum_.n_layers; ++l) {
    if (inputs_seen_[l] != n || n == 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "kv averager: layer %d saw %d inputs, layer 0 saw %d (every layer must own and see "
          "every sample)",
          l, inputs_seen_[l], n));
    }
  }
  AveragedKv avg = sum_;
  for (int l = 0; l < avg.n_layers; ++l) {
    for (double& x : avg.k[l]) x /= n;
    for (double& x : avg.v[l]) x /= n;
  }
  return avg;
}

}  // namespace kvshare
