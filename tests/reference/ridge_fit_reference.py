"""Reference values for search_service/ridge_fit (issue 18), computed with numpy only.

W' = argmin_W ||A W^T - B Wo^T||^2 + lam ||W - Wo||^2, lam = ridge * trace(A^T A) / q,
solved here by numpy.linalg.solve on the stacked least-squares form (a different route from
the C++ normal equations + Cholesky): [A; sqrt(lam) I] W^T = [B Wo^T; sqrt(lam) Wo^T].

The affine fit of a linear substitute (SolveRidgeAffine): M, b = argmin ||H M^T + 1 b^T - D||^2
+ lam ||M||^2, lam = ridge * trace(H^T H) / q, the bias not penalised; here by lstsq on
[H 1; sqrt(lam) I 0] [M^T; b^T] = [D; 0] (the C++ solves the normal equations by Cholesky).

    python3 tests/reference/ridge_fit_reference.py   # writes ridge_fit_reference.json beside it
"""
import json
import os

import numpy as np

rng = np.random.default_rng(18)
rows, q, dim = 23, 6, 5
A = rng.standard_normal((rows, q)).round(3)
B = (A + 0.3 * rng.standard_normal((rows, q))).round(3)
Wo = rng.standard_normal((dim, q)).round(3)
cases = []
for ridge in (1e-3, 0.1, 10.0):
    lam = ridge * np.trace(A.T @ A) / q
    lhs = np.vstack([A, np.sqrt(lam) * np.eye(q)])
    rhs = np.vstack([B @ Wo.T, np.sqrt(lam) * Wo.T])
    Wt, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    cases.append({"ridge": ridge, "w": Wt.T.tolist()})
# Affine: H (rows x q) -> D (rows x dim) with an offset, so the intercept matters.
H = rng.standard_normal((rows, q)).round(3)
D = (H @ rng.standard_normal((q, dim)) + 2.0 + 0.2 * rng.standard_normal((rows, dim))).round(3)
affine = []
for ridge in (1e-3, 0.1, 10.0):
    lam = ridge * np.trace(H.T @ H) / q
    lhs = np.vstack([np.hstack([H, np.ones((rows, 1))]),
                     np.hstack([np.sqrt(lam) * np.eye(q), np.zeros((q, 1))])])
    rhs = np.vstack([D, np.zeros((q, dim))])
    X, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    affine.append({"ridge": ridge, "m": X[:q].T.tolist(), "bias": X[q].tolist()})
out = {"rows": rows, "q": q, "dim": dim, "a": A.tolist(), "b": B.tolist(), "wo": Wo.tolist(),
       "cases": cases, "h": H.tolist(), "d": D.tolist(), "affine": affine}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ridge_fit_reference.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", path)
