// The calibration data of the KVSharer search (docs/METHOD.md §2): a fixed set of token windows,
// and every layer's post-RoPE K/V on them from the unshared model, averaged over the windows.
//
// Calibration set: the first `samples` lines of a text that tokenise to at least `tokens`
// tokens (BOS first when the tokenizer adds one by default; BOS counts), each truncated to
// exactly `tokens`. Lines are the text split at '\n' (a trailing '\r' is dropped). Fewer
// qualifying lines than `samples` is an error naming how many were found — never a smaller set.
//
// All functions are pure or own their state; nothing here is shared between threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/transformer.h"
#include "common/tokenizer/tokenizer.h"

namespace kvshare {

struct CalibrationOptions {
  int samples = 30;  // N
  int tokens = 64;   // T
};

struct CalibrationSet {
  int samples = 0;
  int tokens = 0;
  std::vector<int32_t> ids;       // [samples][tokens]
  std::vector<int> source_lines;  // 1-based line number of each sample in the text
  // Hex SHA-256 of "kvshare-calibration-v1 <samples> <tokens>\n" followed by the ids as
  // little-endian int32: identifies the exact token windows, whatever file they came from.
  std::string hash;

  const int32_t* sample(int s) const { return ids.data() + size_t(s) * tokens; }
};

// Builds the set from `text`. `source` names the text in errors (e.g. "--calibration
// wiki.txt"). InvalidArgument for samples/tokens < 1, for a text with no line that tokenises
// to any token, and for fewer than `samples` qualifying lines (saying how many qualify).
absl::StatusOr<CalibrationSet> BuildCalibrationSet(std::string_view text,
                                                   const Tokenizer& tokenizer,
                                                   const CalibrationOptions& options,
                                                   const std::string& source);
// Same from a file: NotFound for a missing file, InvalidArgument for an empty one.
absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::string& path,
                                                  const Tokenizer& tokenizer,
                                                  const CalibrationOptions& options);

// Per-layer K and V averaged elementwise over the calibration samples, in double:
// k[layer] and v[layer] are [tokens][n_kv_heads][head_dim].
struct AveragedKv {
  int n_layers = 0;
  int tokens = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  std::vector<std::vector<double>> k, v;
};

// A ForwardObserver that sums the post-RoPE K/V every owning layer writes, per position, over
// all inputs of forward passes that run each calibration sample as one input of exactly
// `tokens` rows from position 0 (the unshared model: every layer owns). Result() divides by
// the number of inputs seen per layer. CosineEvaluator::Create runs that forward and feeds it
// (the search needs the unshared forward anyway; this way it runs once).
class KvAverager : public ForwardObserver {
 public:
  KvAverager(const ModelConfig& config, int tokens);
  void OnKv(int layer, int input, const float* k, const float* v, int n) override;
  // FailedPrecondition unless every layer saw the same, non-zero number of full inputs.
  absl::StatusOr<AveragedKv> Result() const;

 private:
  AveragedKv sum_;
  std::vector<int> inputs_seen_;  // per layer
  bool partial_input_ = false;
};

}  // namespace kvshare
