"""The benchmarks' shared test matrix: an embedding-like table with outlier rows."""

from __future__ import annotations

import numpy as np

SEED = 20240601
OUTLIER_FRACTION = 0.05


def outlier_table(rng: np.random.Generator, n_rows: int, dim: int) -> np.ndarray:
    """(n_rows, dim) float64: rows near a random basis with a 1/sqrt(i) spectrum, and
    ``OUTLIER_FRACTION`` of them replaced by isotropic rows 10x the typical norm (what pulls
    an SVD off and an lp fit does not). Draws from ``rng`` in a fixed order."""
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    s = np.arange(1, dim + 1) ** -0.5
    X = (rng.standard_normal((n_rows, dim)) * s) @ Q.T
    m = int(OUTLIER_FRACTION * n_rows)
    rows = rng.choice(n_rows, m, replace=False)
    X[rows] = 10.0 * np.sqrt(s @ s / dim) * rng.standard_normal((m, dim))
    return X
