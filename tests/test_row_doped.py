"""Row doping (lpfast.row_doped): usage weights, the doped fit, parameter counts, state.

Layout: synthetic vocabulary | usage_weights | the trap: weighted + doped vs SVD vs
unweighted l1 | never worse than no doping | exact parameter counts against
lpfast.reference | reconstruct / lookup / to_dict round trip | dtypes, layouts, determinism |
bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import lpfast
from lpfast import reference as ref
from lpfast.row_doped import RowDoped

from shared import DTYPES


def vocabulary(n=3000, d=64, r=6, n_heavy=60, noise=0.05, seed=0, dtype=np.float64):
    """(E, counts): rows on an r-dim subspace plus noise, Zipf usage (exponent 1.1) in a
    random order, and the n_heavy most used rows replaced by rows off that subspace (in
    its orthogonal complement, of the bulk's typical norm)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    main, off = Q[:, :r], Q[:, r:]
    s = np.linspace(3.0, 1.0, r)
    E = (rng.standard_normal((n, r)) * s) @ main.T + noise * rng.standard_normal((n, d))
    counts = np.floor(1e6 / np.arange(1, n + 1) ** 1.1)[rng.permutation(n)]
    heavy = np.argsort(-counts, kind="stable")[:n_heavy]
    scale = np.sqrt((s**2).sum() / (d - r))
    E[heavy] = (rng.standard_normal((n_heavy, d - r)) * scale) @ off.T
    return E.astype(dtype), counts


@pytest.fixture(scope="module")
def vocab():
    return vocabulary()


def weighted_error(E, Ehat, w):
    E = E.astype(np.float64)
    return np.sqrt((w * ((E - Ehat) ** 2).sum(1)).sum() / (w * (E**2).sum(1)).sum())


# -- usage_weights ---------------------------------------------------------------------------

def test_usage_weights_transform():
    c = np.array([0, 1, 4, 100, 0])
    w = lpfast.usage_weights(c, power=0.5, floor=1.0)
    raw = np.maximum(c, 1.0) ** 0.5
    np.testing.assert_allclose(w, raw * 5 / raw.sum())
    assert w.dtype == np.float64 and w.mean() == pytest.approx(1.0)
    assert w[0] > 0  # unseen rows still count
    np.testing.assert_allclose(lpfast.usage_weights(c, 0.0), np.ones(5))
    np.testing.assert_allclose(lpfast.usage_weights(c, 1.0, 2.0, normalize=None),
                               [2, 2, 4, 100, 2])
    assert lpfast.usage_weights(c, normalize="sum").sum() == pytest.approx(1.0)
    w0 = lpfast.usage_weights(c, 1.0, floor=0.0)
    assert w0[0] == 0 and w0[3] > 0


@pytest.mark.parametrize("bad, match", [
    (np.array([1.0, -1.0]), "counts"), (np.array([1.0, np.nan]), "counts"),
    (np.ones((2, 2)), "counts"), (np.array([]), "counts"), (np.zeros(3), "counts")])
def test_usage_weights_bad_counts(bad, match):
    with pytest.raises(ValueError, match=match):
        lpfast.usage_weights(bad, floor=0.0)


def test_usage_weights_bad_arguments():
    with pytest.raises(ValueError, match="power"):
        lpfast.usage_weights([1, 2], power=-1)
    with pytest.raises(ValueError, match="floor"):
        lpfast.usage_weights([1, 2], floor=-1)
    with pytest.raises(ValueError, match="normalize"):
        lpfast.usage_weights([1, 2], normalize="max")
    with pytest.raises(TypeError, match="power"):
        lpfast.usage_weights([1, 2], power="1")


# -- the trap --------------------------------------------------------------------------------

def test_weighted_doping_beats_svd_and_unweighted_l1_does_not(vocab):
    """At one budget (ratio 8): the usage-weighted error of an unweighted SVD is dominated by
    the frequent rows off the bulk's subspace. Weighting + row doping serves them (>= 2x
    lower error); an unweighted l1 fit does not: it down-weights exactly those rows."""
    E, counts = vocab
    w = lpfast.usage_weights(counts)
    budget = E.size // 8
    svd = lpfast.row_doped_fit(E, "svd", budget, exact_fractions=(0.0,))
    l1 = lpfast.row_doped_fit(E, "lp", budget, p=1.0, exact_fractions=(0.0,))
    doped = lpfast.row_doped_fit(E, "lp", budget, p=1.0, weights=w)
    doped_svd = lpfast.row_doped_fit(E, "svd", budget, weights=w)
    e_svd = weighted_error(E, svd.reconstruct(), w)
    e_l1 = weighted_error(E, l1.reconstruct(), w)
    for r in (doped, doped_svd):
        e = weighted_error(E, r.reconstruct(), w)
        assert r.n_exact > 0 and r.n_params <= budget
        assert e <= 0.5 * e_svd, (e, e_svd)
        assert e == pytest.approx(r.error, rel=1e-9)
    assert e_l1 > 0.5 * e_svd  # the trap: robust but unweighted does not help
    assert e_l1 >= 0.95 * e_svd


def test_weighting_alone_or_doping_alone_is_not_enough(vocab):
    """Both remedies are needed here: weighting without doping spends the rank on a few rows;
    doping without weights stores the rows with the largest plain residual."""
    E, counts = vocab
    w = lpfast.usage_weights(counts)
    budget = E.size // 8
    both = lpfast.row_doped_fit(E, "svd", budget, weights=w)
    weighted_only = lpfast.row_doped_fit(E, "svd", budget, weights=w, exact_fractions=(0.0,))
    assert both.error <= 0.5 * weighted_only.error


@pytest.mark.parametrize("method, kw", [("svd", {}), ("lp", {"p": 1.0}), ("lp", {"p": 1.5}),
                                        ("projective", {"n_subspaces": 3, "seed": 0})])
@pytest.mark.parametrize("weighted", [False, True])
def test_never_worse_than_no_doping(vocab, method, kw, weighted):
    E, counts = vocab
    w = lpfast.usage_weights(counts) if weighted else None
    budget = E.size // 10
    plain = lpfast.row_doped_fit(E, method, budget, weights=w, exact_fractions=(0.0,), **kw)
    doped = lpfast.row_doped_fit(E, method, budget, weights=w, **kw)
    assert plain.n_exact == 0
    assert doped.error <= plain.error * (1 + 1e-12)
    assert doped.history[0]["n_exact"] == 0  # the undoped split was a candidate
    assert doped.error == min(h["error"] for h in doped.history)
    assert len(doped.history) >= 3


def test_rounds_keep_the_best_round(vocab):
    E, counts = vocab
    w = lpfast.usage_weights(counts)
    r = lpfast.row_doped_fit(E, "lp", E.size // 8, p=1.0, weights=w, rank=5, n_rounds=3)
    h = r.history[0]
    assert len(h["round_errors"]) >= 2
    assert r.error == min(h["round_errors"])
    assert h["round_errors"][-1] < h["round_errors"][0]  # refitting without them helps


# -- parameter counts ------------------------------------------------------------------------

@pytest.mark.parametrize("method, K", [("svd", 1), ("lp", 1), ("projective", 1),
                                       ("projective", 4)])
@pytest.mark.parametrize("split", ["auto", "rank", "n_exact", "both"])
def test_parameter_count_exact(method, K, split):
    E, counts = vocabulary(600, 24, r=4, n_heavy=20, seed=3)
    n, d = E.shape
    budget = E.size // 6
    kw = {"n_subspaces": K, "seed": 1} if method == "projective" else {}
    if method == "lp":
        kw["p"] = 1.5
    extra = {"auto": {}, "rank": {"rank": 2}, "n_exact": {"n_exact": 30},
             "both": {"rank": 2, "n_exact": 7}}[split]
    r = lpfast.row_doped_fit(E, method, budget, weights=lpfast.usage_weights(counts),
                             **kw, **extra)
    want = ref.row_doped_n_params(method, n, d, r.rank, r.n_exact, K)
    assert r.n_params == want
    state = r.to_dict()
    stored = [v for v in state.values() if isinstance(v, np.ndarray)]
    assert sum(a.size for a in stored) == want
    assert r.n_params <= budget
    assert r.compression_ratio == pytest.approx(n * d / want)
    if "rank" in extra:
        assert r.rank == extra["rank"]
    if "n_exact" in extra:
        assert r.n_exact == extra["n_exact"]
    if split == "rank":  # as many exact rows as the budget pays for: one more would not fit
        assert ref.row_doped_n_params(method, n, d, r.rank, r.n_exact + 1, K) > budget
    if split == "n_exact":
        assert ref.row_doped_n_params(method, n, d, r.rank + 1, r.n_exact, K) > budget
    for h in r.history:
        assert h["n_params"] == ref.row_doped_n_params(method, n, d, h["rank"], h["n_exact"], K)
        assert h["n_params"] <= budget


def test_low_rank_count_matches_plain_svd_without_doping():
    E, _ = vocabulary(500, 20, r=3, n_heavy=5, seed=4)
    r = lpfast.row_doped_fit(E, "svd", 500 * 3 + 3 * 20, exact_fractions=(0.0,))
    assert (r.rank, r.n_exact, r.n_params) == (3, 0, 500 * 3 + 3 * 20)
    U, s, Vt = np.linalg.svd(E, full_matrices=False)
    best = (U[:, :3] * s[:3]) @ Vt[:3]
    np.testing.assert_allclose(r.reconstruct(), best, atol=1e-9)


# -- reconstruct, lookup, state --------------------------------------------------------------

@pytest.mark.parametrize("method, kw", [("svd", {}), ("lp", {"p": 1.0}),
                                        ("projective", {"n_subspaces": 3, "seed": 2})])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reconstruct_lookup_state(method, kw, dtype):
    E, counts = vocabulary(400, 16, r=3, n_heavy=10, seed=5, dtype=dtype)
    w = lpfast.usage_weights(counts)
    E0 = E.copy()
    r = lpfast.row_doped_fit(E, method, E.size // 5, weights=w, **kw)
    np.testing.assert_array_equal(E, E0)  # never modified
    assert r.n_exact > 0
    Eh = r.reconstruct()
    assert Eh.dtype == dtype and Eh.shape == E.shape and r.dtype == dtype
    np.testing.assert_array_equal(Eh[r.exact_indices], E[r.exact_indices])
    assert (np.diff(r.exact_indices) > 0).all() and r.exact_indices.dtype == np.int64
    state = r.to_dict()
    for key, a in state.items():
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            assert a.dtype == dtype, key
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref.row_doped_reconstruct(state), Eh, **tol)
    assert weighted_error(E, Eh, w) == pytest.approx(r.error, rel=1e-6 if dtype == np.float64
                                                     else 1e-3)
    ids = np.array([[0, int(r.exact_indices[0]), 399], [int(r.rest_indices[5]), 3, 0]])
    np.testing.assert_array_equal(r.lookup(ids), Eh[ids])
    assert r.lookup(np.int64(7)).shape == (16,)
    back = RowDoped.from_dict(state)
    np.testing.assert_array_equal(back.reconstruct(), Eh)
    assert back.n_params == r.n_params and repr(back) == repr(r)
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) and v.dtype.kind in "iu" else v)
             for k, v in state.items()}
    np.testing.assert_array_equal(RowDoped.from_dict(plain).reconstruct(), Eh)


def test_lookup_bad_ids():
    E, _ = vocabulary(200, 8, r=2, n_heavy=4, seed=6)
    r = lpfast.row_doped_fit(E, "svd", E.size // 3)
    with pytest.raises(ValueError, match="ids"):
        r.lookup([0, 200])
    with pytest.raises(TypeError, match="ids"):
        r.lookup([0.5])


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("U"), "U"),
    (lambda s: s.update(U=s["U"][1:]), "U"),
    (lambda s: s.update(exact_indices=s["exact_indices"][::-1].copy()), "exact_indices"),
    (lambda s: s.update(exact_indices=s["exact_indices"] + 10**6), "exact_indices"),
    (lambda s: s.update(format="other"), "format"),
    (lambda s: s.update(method="pca"), "method"),
    (lambda s: s.update(Vt=np.full_like(s["Vt"], np.nan)), "Vt"),
])
def test_from_dict_validates(mutate, match):
    E, counts = vocabulary(300, 12, r=2, n_heavy=10, seed=7)
    state = lpfast.row_doped_fit(E, "svd", E.size // 4, weights=lpfast.usage_weights(counts),
                                 n_exact=5).to_dict()
    state = dict(state)
    mutate(state)
    with pytest.raises(ValueError, match=match):
        RowDoped.from_dict(state)
    with pytest.raises(TypeError, match="state"):
        RowDoped.from_dict([1, 2])


# -- dtypes, layouts, determinism ------------------------------------------------------------

def test_fortran_and_integer_input():
    E, _ = vocabulary(300, 12, r=2, n_heavy=5, seed=8)
    a = lpfast.row_doped_fit(E, "svd", E.size // 4)
    b = lpfast.row_doped_fit(np.asfortranarray(E), "svd", E.size // 4)
    np.testing.assert_allclose(a.reconstruct(), b.reconstruct(), atol=1e-10)
    c = lpfast.row_doped_fit(np.round(E * 100).astype(np.int32), "svd", E.size // 4)
    assert c.dtype == np.float64


def test_same_seed_same_result():
    E, counts = vocabulary(800, 16, r=3, n_heavy=20, seed=9)
    w = lpfast.usage_weights(counts)
    kw = dict(weights=w, n_subspaces=4, seed=11)
    a = lpfast.row_doped_fit(E, "projective", E.size // 6, **kw)
    b = lpfast.row_doped_fit(E, "projective", E.size // 6, **kw)
    assert a.error == b.error
    for key, v in a.to_dict().items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, b.to_dict()[key])


# -- bad input -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    return vocabulary(200, 10, r=2, n_heavy=5, seed=10)[0]


@pytest.mark.parametrize("kw, exc, match", [
    ({"budget": 50}, ValueError, "budget"),
    ({"budget": 10.5}, TypeError, "budget"),
    ({"rank": 5, "n_exact": 150}, ValueError, "budget"),
    ({"rank": 9}, ValueError, "budget"),
    ({"n_exact": 199, "budget": 250}, ValueError, "budget|n_exact"),
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": 11}, ValueError, "rank"),
    ({"n_exact": -1}, ValueError, "n_exact"),
    ({"weights": np.ones(199)}, ValueError, "weights"),
    ({"weights": -np.ones(200)}, ValueError, "weights"),
    ({"weights": np.full(200, np.nan)}, ValueError, "weights"),
    ({"method": "pca"}, ValueError, "method"),
    ({"method": "svd", "p": 1.0}, ValueError, "p"),
    ({"p": 0.5, "method": "lp"}, ValueError, "p"),
    ({"method": "projective"}, ValueError, "n_subspaces"),
    ({"method": "svd", "n_subspaces": 3}, ValueError, "n_subspaces"),
    ({"exact_fractions": (0.1, 2.0)}, ValueError, "exact_fractions"),
    ({"exact_fractions": 0.1}, TypeError, "exact_fractions"),
    ({"n_rounds": -1}, ValueError, "n_rounds"),
])
def test_bad_arguments(small, kw, exc, match):
    args = {"method": "svd", "budget": small.size // 4}
    args.update(kw)
    with pytest.raises(exc, match=match):
        lpfast.row_doped_fit(small, args.pop("method"), args.pop("budget"), **args)


@pytest.mark.parametrize("E, match", [
    (np.full((20, 5), np.nan), "E"), (np.ones(20), "E"), (np.ones((1, 5)), "E"),
    (np.ones((20, 5), dtype=complex), "E")])
def test_bad_matrix(E, match):
    with pytest.raises((ValueError, TypeError), match=match):
        lpfast.row_doped_fit(E, "svd", 60)
