"""The compression planner (lpfast.planner.plan_compression).

Layout: the synthetic vocabulary (as in test_row_doped) | the plan's choice and its
guarantees | exact parameter counts of every row | determinism | table, progress,
candidates | bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import lpfast
from lpfast import reference as ref

from test_row_doped import vocabulary, weighted_error

RATIO = 8


@pytest.fixture(scope="module")
def vocab():
    E, counts = vocabulary()
    return E, lpfast.usage_weights(counts)


@pytest.fixture(scope="module")
def plan(vocab):
    E, w = vocab
    return lpfast.plan_compression(E, RATIO, weights=w, seed=0)


@pytest.fixture(scope="module")
def small():
    E, counts = vocabulary(600, 24, r=4, n_heavy=20, seed=3)
    return E, lpfast.usage_weights(counts)


# -- the choice ------------------------------------------------------------------------------

def test_all_candidates_with_and_without_doping(plan):
    names = {r["candidate"] for r in plan.rows}
    base = {"svd", "lp(p=1)", "lp(p=1.5)", "proj(k=2)", "proj(k=5)", "proj(k=10)"}
    assert names == base | {b + "+doped" for b in base}
    assert not plan.skipped
    for r in plan.rows:
        assert r["doped"] == (r["n_exact"] > 0)
        if r["doped"]:
            assert len(r["splits"]) >= 2 and all(s["n_exact"] > 0 for s in r["splits"])
            assert r["error"] == min(s["error"] for s in r["splits"]) or r["refit"]


def test_choice_is_the_lowest_scoring_candidate(plan, vocab):
    E, w = vocab
    errors = [r["error"] for r in plan.rows]
    assert errors == sorted(errors)
    assert [r["place"] for r in plan.rows] == list(range(1, len(plan.rows) + 1))
    b, row = plan.best, plan.best_row
    assert row is plan.rows[0] and row["error"] == min(errors)
    assert (b.rank, b.n_exact, b.n_params, b.method) == (row["rank"], row["n_exact"],
                                                         row["n_params"], row["method"])
    assert b.error == row["error"]
    assert weighted_error(E, b.reconstruct(), w) == pytest.approx(b.error, rel=1e-9)
    assert sum(r["refit"] for r in plan.rows) <= 1


def test_weighted_doped_plan_beats_svd_2x(plan, vocab):
    """The issue's criterion at one budget: the plan (weighted fits with row doping) cuts the
    usage-weighted error at least 2x below an unweighted SVD of the same budget."""
    E, w = vocab
    svd = lpfast.row_doped_fit(E, "svd", plan.budget, exact_fractions=(0.0,))
    assert plan.best.n_exact > 0
    assert plan.best.error <= 0.5 * weighted_error(E, svd.reconstruct(), w)


def test_doping_rows_beat_their_undoped_rows_here(plan):
    by = {r["candidate"]: r for r in plan.rows}
    for name in ("svd", "lp(p=1)", "lp(p=1.5)"):
        assert by[name + "+doped"]["error"] < 0.5 * by[name]["error"]


# -- parameter counts ------------------------------------------------------------------------

def test_parameter_counts_exact(plan, vocab):
    E, _ = vocab
    n, d = E.shape
    assert plan.budget == n * d // RATIO
    for r in plan.rows:
        want = ref.row_doped_n_params(r["method"], n, d, r["rank"], r["n_exact"],
                                      r["n_subspaces"])
        assert r["n_params"] == want <= plan.budget
        assert r["ratio"] == pytest.approx(n * d / want)
        for s in r["splits"]:
            assert s["n_params"] == ref.row_doped_n_params(
                r["method"], n, d, s["rank"], s["n_exact"], r["n_subspaces"]) <= plan.budget
    state = plan.best.to_dict()
    assert sum(v.size for v in state.values() if isinstance(v, np.ndarray)) == \
        plan.best_row["n_params"]


# -- determinism -----------------------------------------------------------------------------

def _strip(plan):
    """The plan without its timings."""
    out = []
    for r in plan.rows:
        r = {k: v for k, v in r.items() if k != "seconds"}
        r["splits"] = [{k: v for k, v in s.items() if k != "seconds"} for s in r["splits"]]
        out.append(r)
    return out


def test_same_seed_same_plan(small):
    E, w = small
    a = lpfast.plan_compression(E, 6, weights=w, seed=5)
    b = lpfast.plan_compression(E, 6, weights=w, seed=5)
    assert _strip(a) == _strip(b)
    for key, v in a.best.to_dict().items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, b.best.to_dict()[key])
    g = lpfast.plan_compression(E, 6, weights=w, seed=np.random.default_rng(5))
    assert len(g.rows) == len(a.rows)


def test_float32(small):
    E, w = small
    p = lpfast.plan_compression(E.astype(np.float32), 6, weights=w, seed=0,
                                candidates=["svd", "lp:1", "projective:2"])
    assert p.best.dtype == np.float32 and len(p.rows) == 6


# -- table, progress, candidates -------------------------------------------------------------

def test_table_and_progress(small, capsys):
    E, w = small
    seen = []
    p = lpfast.plan_compression(E, 6, weights=w, seed=0, candidates=["svd", "lp:1.5"],
                                verbose=True, callback=seen.append)
    err = capsys.readouterr().err
    assert err.count("plan_compression [") == 4
    assert [s["index"] for s in seen] == [1, 2, 3, 4] and seen[0]["total"] == 4
    text, md = str(p), p.to_markdown()
    for r in p.rows:
        assert r["candidate"] in text and f"| {r['candidate']} |" in md
    assert md.count("\n") == len(p.rows) + 1
    assert "budget" in text and "Plan(" in repr(p)


def test_candidate_forms_and_doping_flags(small):
    E, w = small
    p = lpfast.plan_compression(E, 6, weights=w, seed=0, doping=(False,),
                                candidates=["svd", {"method": "lp", "p": 1.25},
                                            "projective:3:1.5", {"method": "projective",
                                                                 "n_subspaces": 2}])
    assert {r["candidate"] for r in p.rows} == {"svd", "lp(p=1.25)", "proj(k=3, p=1.5)",
                                                "proj(k=2)"}
    assert all(r["n_exact"] == 0 for r in p.rows)
    d = lpfast.plan_compression(E, 6, weights=w, seed=0, doping=(True,), candidates="lp:1")
    assert [r["candidate"] for r in d.rows] == ["lp(p=1)+doped"]


def test_candidates_over_budget_are_skipped(small):
    E, w = small
    # budget 600*24/12 = 1200: rank 1 of 200 subspaces needs 2*600 + 200*24 > 1200
    p = lpfast.plan_compression(E, 12, weights=w, seed=0, candidates=["svd", "projective:200"])
    assert {s["candidate"] for s in p.skipped} == {"proj(k=200)", "proj(k=200)+doped"}
    assert {r["candidate"] for r in p.rows} == {"svd", "svd+doped"}


def test_no_refit_keeps_screening_result(small):
    E, w = small
    p = lpfast.plan_compression(E, 6, weights=w, seed=0, candidates=["lp:1"], refit=False)
    assert not any(r["refit"] for r in p.rows)


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, match", [
    ({"ratio": 1.0}, ValueError, "ratio"),
    ({"ratio": 0.5}, ValueError, "ratio"),
    ({"ratio": 1e6}, ValueError, "ratio"),
    ({"ratio": float("nan")}, ValueError, "ratio"),
    ({"ratio": "8"}, TypeError, "ratio"),
    ({"weights": np.ones(599)}, ValueError, "weights"),
    ({"weights": np.full(600, np.nan)}, ValueError, "weights"),
    ({"candidates": ["pca"]}, ValueError, "candidates"),
    ({"candidates": ["lp:x"]}, ValueError, "candidates"),
    ({"candidates": [{"method": "svd", "p": 1}]}, ValueError, "candidates"),
    ({"candidates": [{"method": "projective"}]}, ValueError, "candidates"),
    ({"candidates": []}, ValueError, "candidates"),
    ({"candidates": [3]}, TypeError, "candidates"),
    ({"candidates": 5}, TypeError, "^candidates: expected a sequence"),
    ({"k_values": (-1,)}, ValueError, r"^k_values: expected an integer in \[1, inf\], got -1"),
    ({"k_values": (2.5,)}, TypeError, "^k_values: expected an integer"),
    ({"k_values": 5}, TypeError, "^k_values: expected a sequence"),
    ({"p_values": (0.5,)}, ValueError, "^p_values: expected a value in"),
    ({"p_values": "1"}, TypeError, "^p_values: expected a sequence"),
    ({"doping": ()}, ValueError, "doping"),
    ({"exact_fractions": (0.0,)}, ValueError, "exact_fractions"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": "a"}, TypeError, "seed"),
    ({"callback": 3}, TypeError, "callback"),
])
def test_bad_arguments(small, kw, exc, match):
    E, w = small
    args = {"ratio": 6, "weights": w}
    args.update(kw)
    with pytest.raises(exc, match=match):
        lpfast.plan_compression(E, args.pop("ratio"), **args)


def test_bad_matrix():
    E = np.ones((50, 8))
    E[3, 2] = np.nan
    with pytest.raises(ValueError, match="E"):
        lpfast.plan_compression(E, 4)
    with pytest.raises(ValueError, match="E"):
        lpfast.plan_compression(np.ones(8), 4)
