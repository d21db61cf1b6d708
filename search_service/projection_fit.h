// Calibrated output projections for a strategy's sharing layers (issue 18).
//
// For each sharing layer l (in layer order, so each fit sees the residual stream the earlier
// calibrated layers produce), over the fit set:
//   A = l's attention output over its shared cache (kv_source[l]'s K/V),
//   B = l's attention output over its own K/V (computed from the same residual: what the
//       unshared layer would have attended over),
// and W_o' = ridge fit of A W'^T ~ B W_o^T (ridge_fit.h). W_o' is rounded to the stored type
// (f16 or f32) before the next layer is fitted, so later fits see exactly what the engine
// will apply. Cost: one forward over the fit set plus two extra single-layer passes per
// sharing layer; memory: A and B of one layer ([fit rows][n_heads * head_dim] floats each),
// the residual stream of the fit set, and the K/V of the owning layers.
//
// ProjectionCalibrator adds the choice of the ridge strength: each candidate ridge is fitted
// on the fit set and scored by the mean next-token NLL of the scoring set (another set of
// windows: fitting and scoring on the same text cannot tell candidates apart), and the best
// is kept. Owns an engine (its transformer does the fitting); not thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/output_projections.h"
#include "common/strategy/sharing_strategy.h"
#include "search_service/calibration.h"

namespace kvshare {

// Fits W_o' for every sharing layer of `strategy` (its own projections, if any, are ignored)
// on `fit` (samples x tokens, each sample one sequence from position 0), and with
// `substitutes` a linear substitute for every dropped layer (output_projections.h): over the
// fit set, the layer's normed input h and what its attention over its own K/V adds to the
// residual stream D, and (M, b) = ridge fit of h M^T + b ~ D towards zero (SolveRidgeAffine),
// in layer order like the projections. Null when there is nothing to fit. InvalidArgument for
// a set that does not fit the transformer (a sample longer than max_rows or the context) or
// ridge <= 0.
absl::StatusOr<std::shared_ptr<const OutputProjections>> FitOutputProjections(
    Transformer& transformer, const CalibrationSet& fit, const SharingStrategy& strategy,
    double ridge, DType type, bool substitutes = false);

// For every layer l >= 1, the linear substitute of l when l alone is dropped (entry l: one
// substitute, no projection; entry 0 null), all from one unshared forward pass over `fit` (with
// only l dropped, the residual stream entering l is the unshared model's): equal to
// FitOutputProjections(strategy dropping only l, ..., substitutes) for each l, at the cost of
// one fit instead of n_layers - 1. Memory: n_layers sums of (dim + 1)^2 + (dim + 1) * dim
// doubles (154 MB on SmolLM2).
absl::StatusOr<std::vector<std::shared_ptr<const OutputProjections>>> FitEachSubstitute(
    Transformer& transformer, const CalibrationSet& fit, double ridge, DType type);

struct CalibratedProjections {
  std::shared_ptr<const OutputProjections> projections;  // null: no sharing layer
  double ridge = 0;
  double score_nll = 0;                          // scoring-set NLL with the projections
  double uncalibrated_score_nll = 0;             // scoring-set NLL of the strategy without them
  std::vector<std::pair<double, double>> tried;  // (ridge, scoring-set NLL)
};

class ProjectionCalibrator {
 public:
  // `threads`: the CPU backend's. The sets must fit the model (InvalidArgument otherwise).
  static absl::StatusOr<std::unique_ptr<ProjectionCalibrator>> Create(const Model& model,
                                                                      const CalibrationSet& fit,
                                                                      const CalibrationSet& score,
                                                                      int threads);

  // Mean next-token NLL of the scoring set under `strategy` (with its projections, if any).
  absl::StatusOr<double> ScoreNll(std::shared_ptr<const SharingStrategy> strategy);
  double unshared_score_nll() const { return unshared_nll_; }
  absl::StatusOr<std::shared_ptr<const OutputProjections>> Fit(const SharingStrategy& strategy,
                                                               double ridge, DType type,
                                                               bool substitutes = false);
  absl::StatusOr<std::vector<std::shared_ptr<const OutputProjections>>> FitEachSubstitute(
      double ridge, DType type);
  // Fits every ridge in `ridges`, keeps the lowest scoring-set NLL (the first on ties) when it
  // beats the strategy without projections; otherwise projections is null and ridge 0.
  absl::StatusOr<CalibratedProjections> Calibrate(const SharingStrategy& strategy,
                                                  const std::vector<double>& ridges, DType type,
                                                  bool substitutes = false);

 private:
  ProjectionCalibrator(const Model& model, const CalibrationSet& fit, const CalibrationSet& score)
      : model_(model), fit_(fit), score_(score) {}
  const Model& model_;
  const CalibrationSet& fit_;
  const CalibrationSet& score_;
  std::unique_ptr<Engine> engine_;
  double unshared_nll_ = 0;
};

// The ridge strengths tried by default (relative: ridge_fit.h).
std::vector<double> DefaultRidges();

}  // namespace kvshare
