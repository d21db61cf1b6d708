// The closed-form fit of a calibrated output projection (issue 18), independent of any model.
//
// A sharing layer's attention output over the shared cache, A (rows x q, q = n_heads *
// head_dim), should after the new projection W' (dim x q) match what the layer's own
// attention output B (same shape, over its own K/V) gives after the model's W_o:
//   W' = argmin_W  || A W^T - B W_o^T ||^2  +  lambda || W - W_o ||^2
// Ridge towards W_o (not towards zero): lambda -> infinity gives back the model's projection,
// so a weak fit degrades to no change. Normal equations, with G = A^T A and C = A^T B:
//   (G + lambda I) W'^T = (C + lambda I) W_o^T
// solved by a Cholesky factorisation (LAPACK dpotrf/dpotrs, double precision). lambda is
// given relative to the data: lambda = ridge * trace(G) / q, so one ridge value means the
// same at every layer and fit-set size.
//
// Pure functions; thread-compatible.
#pragma once

#include <vector>

#include "absl/status/statusor.h"

namespace kvshare {

// Sums of a fit: G = sum A^T A and C = sum A^T B over row batches, in double.
class RidgeAccumulator {
 public:
  explicit RidgeAccumulator(int q) : RidgeAccumulator(q, q) {}
  // A of q columns, B of q_out.
  RidgeAccumulator(int q, int q_out);
  // Adds `rows` rows of A ([rows][q]) and B ([rows][q_out]), float.
  void Add(const float* a, const float* b, int rows);
  int q() const { return q_; }
  int q_out() const { return q_out_; }
  int64_t rows() const { return rows_; }
  const std::vector<double>& gram() const { return g_; }   // [q][q]
  const std::vector<double>& cross() const { return c_; }  // [q][q_out], A^T B

 private:
  int q_, q_out_;
  int64_t rows_ = 0;
  std::vector<double> g_, c_;
};

// W' ([dim][q] row-major, float) from the sums and the model's W_o ([dim][q] row-major).
// InvalidArgument for ridge <= 0 or sizes that disagree; FailedPrecondition when G + lambda I
// is not positive definite (no rows added and a zero trace).
absl::StatusOr<std::vector<float>> SolveRidgeProjection(const RidgeAccumulator& sums,
                                                        const std::vector<float>& wo, int dim,
                                                        double ridge);

// A linear substitute (output_projections.h): M [dim][q] and b [dim] minimising
//   || H M^T + 1 b^T - D ||^2 + lambda || M ||^2
// (ridge towards zero, the intercept free), from sums over A = [H 1] (q + 1 columns, the last
// all ones) and B = D (dim columns): (G + lambda I') X = C with I' the identity but for a zero
// at the intercept, X = [M^T; b^T]. lambda = ridge * trace(G without the intercept) / q.
// InvalidArgument for ridge <= 0 or q < 1; FailedPrecondition for no rows or all-zero inputs.
struct AffineFit {
  std::vector<float> matrix;  // [dim][q]
  std::vector<float> bias;    // [dim]
};
absl::StatusOr<AffineFit> SolveRidgeAffine(const RidgeAccumulator& sums, double ridge);

}  // namespace kvshare
