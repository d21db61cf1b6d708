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

RidgeAccumulator::RidgeAccumulator(int q, int q_out)
    : q_(q), q_out_(q_out), g_(size_t(q) * q, 0.0), c_(size_t(q) * q_out, 0.0) {}

void RidgeAccumulator::Add(const float* a, const float* b, int rows) {
  if (rows <= 0) return;
  std::vector<double> ad(a, a + size_t(rows) * q_), bd(b, b + size_t(rows) * q_out_);
  // G += A^T A (both triangles: dgemm, the matrices are small), C += A^T B.
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q_, q_, rows, 1.0, ad.data(), q_, ad.data(),
              q_, 1.0, g_.data(), q_);
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q_, q_out_, rows, 1.0, ad.data(), q_,
              bd.data(), q_out_, 1.0, c_.data(), q_out_);
  rows_ += rows;
}

namespace {

// Solves M X = R in place (M symmetric positive definite [n][n], R [n][nrhs] column-major, i.e.
// nrhs rows of n as row-major); lambda is named in errors.
absl::Status CholeskySolve(std::vector<double>& m, int n, std::vector<double>& r, int nrhs,
                           double lambda) {
  const char uplo = 'L';
  int info = 0;
  dpotrf_(&uplo, &n, m.data(), &n, &info);
  if (info != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "ridge fit: G + lambda I is not positive definite (dpotrf info %d, lambda %g)", info,
        lambda));
  }
  dpotrs_(&uplo, &n, &nrhs, m.data(), &n, r.data(), &n, &info);
  if (info != 0) {
    return absl::InternalError(absl::StrFormat("ridge fit: dpotrs info %d", info));
  }
  return absl::OkStatus();
}

}  // namespace

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
  // Column-major view: rt is q x dim with leading dimension q, i.e. the dim right-hand sides.
  absl::Status s = CholeskySolve(m, q, rt, dim, lambda);
  if (!s.ok()) return s;
  // The solution X = W'^T (q x dim) column-major is W' [dim][q] row-major.
  return std::vector<float>(rt.begin(), rt.end());
}

absl::StatusOr<AffineFit> SolveRidgeAffine(const RidgeAccumulator& sums, double ridge) {
  const int n = sums.q(), q = n - 1, dim = sums.q_out();
  if (!(ridge > 0)) {
    return absl::InvalidArgumentError(absl::StrFormat("ridge %g must be > 0", ridge));
  }
  if (q < 1 || dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("affine fit: %d inputs (with the intercept) and %d outputs", n, dim));
  }
  double trace = 0;
  for (int i = 0; i < q; ++i) trace += sums.gram()[size_t(i) * n + i];
  const double lambda = ridge * trace / q;
  if (!(lambda > 0) || sums.rows() == 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("affine fit: the inputs are all zero (%d rows)", sums.rows()));
  }
  std::vector<double> m = sums.gram();
  for (int i = 0; i < q; ++i) m[size_t(i) * n + i] += lambda;
  // The right-hand sides column-major: dim columns of n, i.e. C^T row-major.
  std::vector<double> rt(size_t(dim) * n);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < dim; ++j) rt[size_t(j) * n + i] = sums.cross()[size_t(i) * dim + j];
  }
  absl::Status s = CholeskySolve(m, n, rt, dim, lambda);
  if (!s.ok()) return s;
  AffineFit fit;
  fit.matrix.resize(size_t(dim) * q);
  fit.bias.resize(dim);
  for (int j = 0; j < dim; ++j) {
    for (int i = 0; i < q; ++i) fit.matrix[size_t(j) * q + i] = float(rt[size_t(j) * n + i]);
    fit.bias[j] = float(rt[size_t(j) * n + q]);
  }
  return fit;
}

}  // namespace kvshare
