"""Benchmarks of FFN hidden-unit pruning (``lpfast.prune_hidden_units``, ``lpfast.torch.prune_ffn``).

Data: FFN pairs of all-MiniLM-L6-v2's shape, d = 384 -> h = 1536 -> 384, random float32
weights (W2's columns scaled by U(0, 3), units of unequal importance), inputs of rank 32 plus
noise, N_ROWS calibration rows; hidden Gram C = mean of a aᵀ over the GELU outputs a.
Half the hidden units kept (768).

Group ``prune-hidden-384x1536``:

* ``test_prune_hidden_units``  lpfast: score, refit (LU solve on C[K, K] + ridge) and the two
  reported calibration errors;
* ``test_numpy_baseline``  the same scores and refit in plain NumPy (``np.linalg.solve``),
  no errors reported: the floor for the fit itself.

Group ``prune-ffn-2blocks``: ``test_prune_ffn``  prune_ffn on a 2-block residual FFN model
(calibration done once, outside the timing; each round prunes a fresh copy).

Each benchmark asserts its result (the kept set and refit against the NumPy baseline, the
refit error below plain selection, the pruned shapes), so ``--benchmark-disable`` (the
default of ``python -m pytest``) makes this file a test; it then uses CHECK_D x CHECK_H.

Run: ``python -m pytest bench/bench_prune.py --benchmark-only --benchmark-columns=min,median,max``
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import lpfast

D, H, N_ROWS = 384, 1536, 4096
CHECK_D, CHECK_H = 48, 192  # sizes when benchmarks are disabled (a test run)


def sizes(benchmark):
    return (D, H) if benchmark.enabled else (CHECK_D, CHECK_H)


def case(d, h, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((N_ROWS, 32)) @ rng.standard_normal((32, d))
         + 0.3 * rng.standard_normal((N_ROWS, d))) / np.sqrt(32)
    W1 = rng.standard_normal((h, d)) / np.sqrt(d)
    Z = X @ W1.T
    A = 0.5 * Z * (1 + np.tanh(0.7978845608 * (Z + 0.044715 * Z ** 3)))  # GELU (tanh form)
    W2 = (rng.standard_normal((d, h)) * rng.uniform(0, 3, h) / np.sqrt(h)).astype(np.float32)
    return W2, A.T @ A / N_ROWS


def numpy_prune(W2, C, k):
    W = W2.astype(np.float64)
    scores = (W ** 2).sum(0) * np.diag(C)
    K = np.sort(np.argsort(-scores, kind="stable")[:k])
    CKK = C[np.ix_(K, K)]
    V = np.linalg.solve(CKK + 1e-6 * np.mean(np.diag(CKK)) * np.eye(k), C[K] @ W.T).T
    return K, V.astype(W2.dtype)


@pytest.mark.benchmark(group="prune-hidden-384x1536")
def test_prune_hidden_units(benchmark):
    d, h = sizes(benchmark)
    W2, C = case(d, h)
    r = benchmark(lpfast.prune_hidden_units, W2, C, h // 2)
    K, V = numpy_prune(W2, C, h // 2)
    np.testing.assert_array_equal(r.keep, K)
    np.testing.assert_allclose(r.W_out, V, rtol=1e-3, atol=1e-4 * np.abs(V).max())
    assert r.refit and 0 < r.error_after < r.error_before
    benchmark.extra_info.update(error_before=r.error_before, error_after=r.error_after)


@pytest.mark.benchmark(group="prune-hidden-384x1536")
def test_numpy_baseline(benchmark):
    d, h = sizes(benchmark)
    W2, C = case(d, h)
    K, V = benchmark(numpy_prune, W2, C, h // 2)
    assert K.shape == (h // 2,) and V.shape == (d, h // 2) and np.isfinite(V).all()


@pytest.mark.benchmark(group="prune-ffn-2blocks")
def test_prune_ffn(benchmark):
    torch = pytest.importorskip("torch")
    from torch import nn

    from lpfast.torch import calibrate, prune_ffn

    d, h = sizes(benchmark)
    torch.manual_seed(0)
    model = nn.ModuleDict({f"b{i}": nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
                           for i in range(2)})

    def forward(x):
        for b in model.values():
            x = x + b(x)
        return x

    model.forward = forward
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(512, 32, generator=g) @ torch.randn(32, d, generator=g) / 32 ** 0.5
               for _ in range(4)]
    cal = calibrate(model, batches, rules=["b*.2"], progress=False)

    def run():
        m = copy.deepcopy(model)
        return m, prune_ffn(m, {"b?.0": "b{}.2"}, cal, keep=0.5)

    pruned, report = benchmark.pedantic(run, rounds=3 if benchmark.enabled else 1, iterations=1)
    assert [p.hidden_after for p in report.pairs] == [h // 2, h // 2]
    assert pruned["b0"][0].weight.shape == (h // 2, d) and pruned["b1"][2].weight.shape == (d, h // 2)
    assert report.params_after < 0.51 * report.params_before
    assert all(p.error_after < p.error_before for p in report.pairs)
    benchmark.extra_info.update(seconds_per_pair=[p.seconds for p in report.pairs])
