"""Constants and NumPy data shared by the test modules (``from shared import DTYPES``).

They live here, not in conftest.py, because ``python -m pytest`` also collects bench/, whose
conftest.py is imported under the same module name ``conftest``: ``from conftest import``
would then find whichever was loaded last.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Every kernel exists for float32 and float64 (DESIGN.md); tests parametrize over both.
DTYPES = (np.float32, np.float64)


def matrix(n: int = 120, d: int = 12, dtype=np.float64, seed: int = 0) -> np.ndarray:
    """Rows near a 3-dim subspace plus a few far rows (so doping stores some)."""
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + 0.1 * rng.standard_normal((n, d))
    E[rng.choice(n, 6, replace=False)] += 4 * rng.standard_normal((6, d))
    return E.astype(dtype)


def zipf_counts(n: int, seed: int = 0) -> np.ndarray:
    """Token counts with a Zipf-like tail, in random row order."""
    rng = np.random.default_rng(seed)
    return np.floor(1e5 / np.arange(1, n + 1) ** 1.1)[rng.permutation(n)]


def deprecations(get):
    """What ``get()`` returns twice (the same object), and the DeprecationWarnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = get(), get()
    assert first is second
    return first, [w for w in caught if issubclass(w.category, DeprecationWarning)]
