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
  explicit RidgeAccumulator(int q);
  // Adds `rows` rows of A and B (float, [rows][q] each).
  void Add(const float* a, const float* b, int rows);
  int q() const { return q_; }
  int64_t rows() const { return rows_; }
  const std::vector<double>& gram() const { return g_; }   // [q][q]
  const std::vector<double>& cross() const { return c_; }  // [q][q], A^T B

 private:
  int q_;
  int64_t rows_ = 0;
  std::vector<double> g_, c_;
};

// W' ([dim][q] row-major, float) from the sums and the model's W_o ([dim][q] row-major).
// InvalidArgument for ridge <= 0 or sizes that disagree; FailedPrecondition when G + lambda I
// is not positive definite (no rows added and a zero trace).
absl::StatusOr<std::vector<float>> SolveRidgeProjection(const RidgeAccumulator& sums,
                                                        const std::vector<float>& wo, int dim,
                                                        double ridge);

}  // namespace kvshare
