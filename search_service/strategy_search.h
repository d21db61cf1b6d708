// The strategy search for one model, under any selection rule (selection_rules.h): one
// unshared forward over the calibration set (K/V averaged per layer, hidden states kept for the
// evaluator), the layer distance matrix, then BestOfKSearch over the rule's evaluator
// (CosineEvaluator for kvsharer, LossEvaluator for nll). `--method kvsharer --best-of 1` is the
// paper's search (docs/METHOD.md §3) exactly: best-of-1 selection makes GreedySearch's choices
// (tests/search/greedy_search_test.cc). The result carries the calibration cosine score of the
// final strategy, and the wall time at which each acceptance happened, so one run to the
// largest target also times every smaller one.
//
// Deterministic: the strategy and the trace depend on the model, the calibration set and the
// options only (the CPU kernels give the same numbers at any thread count). Timings are
// reported beside them and are not part of either.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/calibration.h"
#include "search_service/layer_distance.h"
#include "search_service/projection_fit.h"
#include "search_service/selection_rules.h"

namespace kvshare {

// Rows per forward pass the search asks of its Transformer: all samples at once up to 2048
// rows (fewer, bigger GEMMs), and never less than one sample.
int SearchMaxRows(const CalibrationSet& calibration);

enum class SearchPhase {
  kCalibration,  // the unshared forward, K/V averaging, distances
  kGreedy,       // scoring candidates
};
const char* SearchPhaseName(SearchPhase phase);

// What a caller may watch and stop while the search runs. Every hook is optional and is
// called on the searching thread.
struct SearchHooks {
  std::function<void(SearchPhase)> on_phase;  // at the start of each phase
  GreedyProgressFn progress;                  // before each candidate is scored
  // Read before every forward pass over the calibration set (the unshared one and each
  // candidate's): once true the search stops there, so within one candidate evaluation, and
  // returns Cancelled.
  const std::atomic<bool>* cancel = nullptr;
};

struct StrategySearchResult {
  LayerDistances distances;
  SelectionResult selection;
  // The final strategy; provenance: method, order, threshold (kvsharer's cosine threshold;
  // 0 for nll), best_of, max_nll_increase, calibration_hash, target_layers, score (the rule's
  // metric of the final strategy), calibration_score, and a note (samples, tokens, seed, stop,
  // counts).
  std::shared_ptr<const SharingStrategy> strategy;
  double calibration_score = 1.0;  // mean cosine to the unshared model on the calibration set
  double calibration_seconds = 0;  // unshared forward, K/V averaging, distances
  double greedy_seconds = 0;
  double total_seconds = 0;
  // Seconds from the start of the search to the k-th acceptance (index k-1): wall time, and
  // the process's CPU time (all threads; on a machine shared with other work, CPU time / the
  // backend's threads estimates the wall time it would take alone).
  std::vector<double> accept_seconds;
  std::vector<double> accept_cpu_seconds;
  double total_cpu_seconds = 0;
};

// The CPU backend the searches' calibration forwards run on (the sharing search's and the KV
// plan search's; held-out checks build their own engines): `threads` threads (0: all cores),
// quantized matmuls with `activations`, and with kInt8x2 the output projection to logits with
// one int8 digit (CpuBackendOptions::logits_activations). That projection never feeds a later
// layer; on SmolLM2 it is a fifth of a forward's work and one digit moves a candidate's
// calibration NLL by at most ~0.002 nats, finding the same strategies (docs/METHOD.md §4).
CpuBackendOptions CalibrationBackendOptions(int threads, cpu::Activations activations);
// What CalibrationBackendOptions' forwards take, for a strategy's note and the CLI's header:
// "f32 activations", "int8x2 activations (int8 for logits)".
std::string CalibrationActivationsNote(cpu::Activations activations);

// CalibrationBackendOptions(threads, options.activations).
CpuBackendOptions SearchBackendOptions(int threads, const SelectionOptions& options);

// Runs the search with its own Transformer over `backend` (SearchBackendOptions' on the CPU:
// the strategy's note names options.activations as the forwards'). Errors:
// ValidateSelectionOptions, a calibration set that does not fit the model, backend failures,
// Cancelled (hooks.cancel), and InvalidArgument for options.calibrated without a `calibrator`
// (projection_fit.h: it holds the fit and scoring sets the candidates are judged on). The distances
// still come from the calibration set.
absl::StatusOr<StrategySearchResult> RunStrategySearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const SelectionOptions& options,
                                                       const SearchHooks& hooks = {},
                                                       ProjectionCalibrator* calibrator = nullptr);

// Mean cosine of the final-norm states of `kv_source` to the unshared model's on the
// calibration set (the paper's score, for strategies no search scored, e.g. baselines).
absl::StatusOr<double> CalibrationCosine(const Model& model, Backend& backend,
                                         const CalibrationSet& calibration,
                                         const std::vector<int>& kv_source);

}  // namespace kvshare
