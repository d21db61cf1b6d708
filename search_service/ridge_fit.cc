#include "search_service/ridge_fit.h"

#include <cblas.h>

#include <vector>

#include "absl/strings/str_format.h"

extern "C" {
// LAPACK (bundled with OpenBLAS), Fortran calling convention.
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda,
             double* b, const int* ldb, int* info);
}

namespace kvshare {

RidgeAccumulator::RidgeAccumulator(int q) : q_(q), g_(size_t(q) * q, 0.0), c_(size_t(q) * q, 0.0) {}

void RidgeAccumulator::Add(const float* a, const float* b, int rows) {
  if (rows <= 0) return;
  std::vector<double> ad(size_t(rows) * q_), bd(size_t(rows) * q_);
  for (size_t i = 0; i < ad.size(); ++i) ad[i] = a[i], bd[i] = b[i];
  // G += A^T A (both triangles: dgemm, the matrices are small), C += A^T B.
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q_, q_, rows, 1.0, ad.data(), q_, ad.data(),
              q_, 1.0, g_.data(), q_);
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q_, q_, rows, 1.0, ad.data(), q_, bd.data(),
              q_, 1.0, c_.data(), q_);
  rows_ += rows;
}

absl::StatusOr<std::vector<float>> SolveRidgeProjection(const RidgeAccumulator& sums,
                                                        const std::vector<float>& wo, int dim,
                                                        double ridge) {
  const int q = sums.q();
  if (!(ridge > 0)) {
    return absl::InvalidArgumentError(absl::StrFormat("ridge %g must be > 0", ridge));
  }
  if (dim < 1 || wo.size() != size_t(dim) * q) {
    return absl::InvalidArgumentError(
        absl::StrFormat("W_o has %d values, want dim %d x q %d", wo.size(), dim, q));
  }
  double trace = 0;
  for (int i = 0; i < q; ++i) trace += sums.gram()[size_t(i) * q + i];
  const double lambda = ridge * trace / q;
  if (!(lambda > 0)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("ridge fit: the attention outputs are all zero (%d rows)", sums.rows()));
  }
  // M = G + lambda I; R = (C + lambda I) W_o^T, [q][dim]. Row-major symmetric M is its own
  // column-major transpose; R is passed column-major as R^T ([dim][q] row-major).
  std::vector<double> m = sums.gram();
  for (int i = 0; i < q; ++i) m[size_t(i) * q + i] += lambda;
  std::vector<double> wod(wo.begin(), wo.end());  // [dim][q]
  std::vector<double> cl = sums.cross();
  for (int i = 0; i < q; ++i) cl[size_t(i) * q + i] += lambda;
  // R^T[dim][q] = W_o (C + lambda I)^T.
  std::vector<double> rt(size_t(dim) * q);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, dim, q, q, 1.0, wod.data(), q, cl.data(), q,
              0.0, rt.data(), q);
  const char uplo = 'L';
  int info = 0;
  dpotrf_(&uplo, &q, m.data(), &q, &info);
  if (info != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "ridge fit: G + lambda I is not positive definite (dpotrf info %d, lambda %g)", info,
        lambda));
  }
  // Column-major view: rt is q x dim with leading dimension q, i.e. the dim right-hand sides.
  dpotrs_(&uplo, &q, &dim, m.data(), &q, rt.data(), &q, &info);
  if (info != 0) {
    return absl::InternalError(absl::StrFormat("ridge fit: dpotrs info %d", info));
  }
  // The solution X = W'^T (q x dim) column-major is W' [dim][q] row-major.
  return std::vector<float>(rt.begin(), rt.end());
}

}  // namespace kvshare
