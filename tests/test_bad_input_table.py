"""The bad-input table: every public function of ``lpfast`` and ``lpfast.torch``, and the
command line, on wrong ranks, dtypes (complex, object, strings), NaN/Inf, empty arrays,
ragged lists, out-of-range sizes, mismatched float dtypes, malformed files and the cases
of issue 18. Each must raise ValueError or TypeError whose message names the argument (the
CLI: exit code 2 and a one-line ``error:`` message naming the file or option, never a
traceback); nothing may crash the process, hang, run code from a file or return silently.

The NumPy rows are generated: for each public function, a valid baseline call, and each of
its array arguments replaced in turn by every bad variant that applies to it.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import lpfast

ROOT = Path(__file__).resolve().parents[1]
# the subprocesses import the lpfast this test imported
PYTHONPATH = str(Path(lpfast.__file__).resolve().parents[1])
ERRORS = (ValueError, TypeError)
# tests/sanitize.sh runs this file under ASan with the kernels instrumented; torch and the
# interpreters the CLI rows spawn are not, and only slow the run down there.
not_under_sanitizer = pytest.mark.skipif(os.environ.get("LPFAST_SANITIZE") == "1",
                                         reason="torch / CLI rows: not instrumented (tests/sanitize.sh)")


def names_argument(msg: str, name: str) -> bool:
    """``name`` appears in the message as a token ("X: ...", "S.data: ...", "... x is ...")."""
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", msg) is not None


def assert_rejects(call, name, exc=ERRORS) -> None:
    """``call()`` raises ``exc`` whose message names ``name`` (or one of a tuple of names)."""
    names = (name,) if isinstance(name, str) else name
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert any(names_argument(msg, n) for n in names), \
        f"{type(info.value).__name__} does not name {' or '.join(names)}: {msg}"
    # the first line says it: no multi-line dumps (a pybind11 signature list)
    assert "\n" not in msg.strip() or msg.startswith(names), msg


# -- a valid baseline per function ----------------------------------------------------------

_rng = np.random.default_rng(0)
X = _rng.standard_normal((12, 4))
W66 = _rng.standard_normal((6, 6))
A23, B32 = _rng.standard_normal((2, 3)), _rng.standard_normal((3, 2))
X6 = _rng.standard_normal((4, 6))
GRAM6 = np.cov(_rng.standard_normal((6, 30))) + np.eye(6)
BASIS = np.linalg.qr(_rng.standard_normal((4, 2)))[0]


class Spec:
    """A function, its valid keyword arguments, per array argument the ranks it takes (None:
    any leading batch shape), and the arguments for which an empty array is valid: a batch
    of no rows, or a factor of a zero-sized operator (as torch.nn.Linear(0, n) is)."""

    def __init__(self, fn, kwargs, arrays, empty_ok=()):
        self.fn, self.kwargs, self.arrays, self.empty_ok = fn, kwargs, arrays, set(empty_ok)

    def call(self, **change):
        return lambda: self.fn(**{**self.kwargs, **change})


def _ksub_predict(Y):
    return lpfast.k_subspaces(X, 2, 1, seed=0, n_init=1).predict(Y)


def _dk_call(x):
    return lpfast.DopedKronecker(A23, B32)(x)


def _lrs_call(x):
    return lpfast.LowRankSparse(np.ones((6, 2)), np.ones((2, 6)))(x)


SPECS = {
    "lp_subspace": Spec(lpfast.lp_subspace, dict(X=X, k=2), {"X": (2,), "weights": (1,)}),
    "subspace_cost": Spec(lpfast.subspace_cost, dict(X=X, basis=BASIS),
                          {"X": (2,), "basis": (2,), "weights": (1,)}),
    "lewis_weights": Spec(lpfast.lewis_weights, dict(X=X), {"X": (2,)}),
    "lewis_sample": Spec(lpfast.lewis_sample, dict(X=X, m=5, seed=0), {"X": (2,)}),
    "k_subspaces": Spec(lpfast.k_subspaces, dict(X=X, n_subspaces=2, dim=1, seed=0, n_init=1),
                        {"X": (2,), "weights": (1,), "init_bases": (3,)}),
    "KSubspaces.predict": Spec(_ksub_predict, dict(Y=X[:3]), {"Y": (1, 2)}, empty_ok={"Y"}),
    "doped_kp_matmul": Spec(lpfast.doped_kp_matmul, dict(x=X6, A=A23, B=B32, bias=np.ones(6)),
                            {"x": None, "A": (2, 3), "B": (2, 3), "bias": (1,)}, empty_ok="AB"),
    "DopedKronecker": Spec(lpfast.DopedKronecker, dict(A=A23, B=B32, bias=np.ones(6)),
                           {"A": (2, 3), "B": (2, 3), "bias": (1,)}, empty_ok="AB"),
    "DopedKronecker.__call__": Spec(_dk_call, dict(x=X6), {"x": None}),
    "nearest_kronecker": Spec(lpfast.nearest_kronecker, dict(W=W66, a_shape=(2, 3), b_shape=(3, 2)),
                              {"W": (2,)}),
    "doped_kp_fit": Spec(lpfast.doped_kp_fit, dict(W=W66, a_shape=(2, 3), b_shape=(3, 2), density=0.1),
                         {"W": (2,)}),
    "doped_kp_fit_calibrated": Spec(
        lpfast.doped_kp_fit_calibrated,
        dict(W=W66, a_shape=(2, 3), b_shape=(3, 2), density=0.1, input_gram=GRAM6),
        {"W": (2,), "input_gram": (2,)}),
    "LowRankSparse": Spec(lpfast.LowRankSparse, dict(U=np.ones((6, 2)), V=np.ones((2, 6)), bias=np.ones(6)),
                          {"U": (2,), "V": (2,), "bias": (1,)}, empty_ok="UV"),
    "LowRankSparse.__call__": Spec(_lrs_call, dict(x=X6), {"x": None}),
    "lowrank_fit": Spec(lpfast.lowrank_fit, dict(W=W66, rank=2, input_gram=GRAM6),
                        {"W": (2,), "input_gram": (2,)}),
    "lowrank_fit(scale)": Spec(lpfast.lowrank_fit, dict(W=W66, rank=2, input_scale=np.ones(6)),
                               {"input_scale": (1,)}),
    "lowrank_sparse_fit": Spec(lpfast.lowrank_sparse_fit, dict(W=W66, rank=2, density=0.1, input_gram=GRAM6),
                               {"W": (2,), "input_gram": (2,)}),
    "calibration_error": Spec(lpfast.calibration_error, dict(W=W66, W_hat=W66 * 0.5, input_gram=GRAM6),
                              {"W": (2,), "W_hat": (2,), "input_gram": (2,)}),
    "row_doped_fit": Spec(lpfast.row_doped_fit, dict(E=X, method="svd", budget=30, weights=np.ones(12)),
                          {"E": (2,), "weights": (1,)}),
    "usage_weights": Spec(lpfast.usage_weights, dict(counts=np.arange(12.0)), {"counts": (1,)}),
    "prune_hidden_units": Spec(lpfast.prune_hidden_units, dict(W_out=W66, hidden_gram=GRAM6, keep=2),
                               {"W_out": (2,), "hidden_gram": (2,)}),
    "plan_compression": Spec(lpfast.plan_compression, dict(E=X, ratio=2.0, candidates=["svd"]),
                             {"E": (2,), "weights": (1,)}),
}


def _wrong_rank(a: np.ndarray, ranks) -> list[tuple[str, np.ndarray]]:
    out = []
    lo, hi = min(ranks), max(ranks)
    out.append((f"{hi + 1}d", a.reshape((1,) * (hi + 1 - a.ndim) + a.shape)))
    if lo - 1 >= 1:
        out.append((f"{lo - 1}d", a[(0,) * (a.ndim - (lo - 1))]))
    elif lo - 1 == 0:
        out.append(("0d", np.asarray(1.0)))
    return out


def _bad_variants(a: np.ndarray, ranks, empty_ok: bool) -> list[tuple[str, object]]:
    nan, inf = a.astype(float), a.astype(float)
    nan.flat[0], inf.flat[-1] = np.nan, np.inf
    v = [("0d", np.asarray(1.0))] if ranks is None else _wrong_rank(a, ranks)
    v += [("complex", a.astype(complex)), ("object", a.astype(object)), ("str", a.astype(str)),
          ("nan", nan), ("inf", inf), ("none_dict", {"a": 1}), ("string", "abc")]
    if a.ndim >= 1:
        v.append(("ragged", [list(r) for r in np.atleast_2d(a)][:1] + [[1.0]]
                  if a.ndim == 2 else [[1.0, 2.0], [3.0]]))
    if ranks is not None and not empty_ok:
        v.append(("empty", a[:0] if a.ndim else np.zeros(0)))
        if a.ndim == 2:
            v.append(("empty_cols", a[:, :0]))
    return v


def _numpy_cases():
    cases = []
    for fname, spec in SPECS.items():
        for arg, ranks in spec.arrays.items():
            base = spec.kwargs.get(arg)
            if base is None:  # optional: bad versions of a valid value of the right shape
                base = {"weights": np.ones(X.shape[0]), "init_bases": np.stack([BASIS[:, :1]] * 2)}[arg]
            for vname, bad in _bad_variants(np.asarray(base), ranks, arg in spec.empty_ok):
                cases.append(pytest.param(spec.call(**{arg: bad}), arg, id=f"{fname}-{arg}-{vname}"))
    return cases


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("call, name", _numpy_cases())
def test_array_arguments(call, name):
    assert_rejects(call, name)


def test_every_public_name_has_a_row():
    """A new public function must come with its rows here."""
    covered = {n.split(".")[0].split("(")[0] for n in SPECS} | set(SCALAR_COVERED)
    missing = set(lpfast.__all__) - covered - {"LpSubspace", "KSubspaces", "Plan", "HiddenPrune",
                                               "RowDoped", "get_num_threads", "has_openmp"}
    assert not missing, f"add bad-input rows for {sorted(missing)}"


# -- scalar arguments (sizes, exponents, densities, shapes, seeds) -------------------------------

def _scalar_cases():
    rows = [
        # (id, call, argument)
        ("lp_subspace-k0", lambda: lpfast.lp_subspace(X, 0), "k"),
        ("lp_subspace-k_too_large", lambda: lpfast.lp_subspace(X, 5), "k"),
        ("lp_subspace-k_float", lambda: lpfast.lp_subspace(X, 2.5), "k"),
        ("lp_subspace-k_bool", lambda: lpfast.lp_subspace(X, True), "k"),
        ("lp_subspace-k_str", lambda: lpfast.lp_subspace(X, "2"), "k"),
        ("lp_subspace-p_below_1", lambda: lpfast.lp_subspace(X, 2, 0.5), "p"),
        ("lp_subspace-p_nan", lambda: lpfast.lp_subspace(X, 2, float("nan")), "p"),
        ("lp_subspace-p_inf", lambda: lpfast.lp_subspace(X, 2, float("inf")), "p"),
        ("lp_subspace-max_iter0", lambda: lpfast.lp_subspace(X, 2, max_iter=0), "max_iter"),
        ("lp_subspace-tol_neg", lambda: lpfast.lp_subspace(X, 2, tol=-1.0), "tol"),
        ("lp_subspace-eps0", lambda: lpfast.lp_subspace(X, 2, eps=0.0), "eps"),
        ("lp_subspace-init_name", lambda: lpfast.lp_subspace(X, 2, init="pca"), "init"),
        ("lp_subspace-init_rank_deficient", lambda: lpfast.lp_subspace(X, 2, init=np.ones((4, 2))), "init"),
        ("lp_subspace-coreset0", lambda: lpfast.lp_subspace(X, 2, coreset=0), "coreset"),
        ("lp_subspace-seed_neg", lambda: lpfast.lp_subspace(X, 2, coreset=5, seed=-1), "seed"),
        ("lp_subspace-callback", lambda: lpfast.lp_subspace(X, 2, callback=5), "callback"),
        ("lp_subspace-weights_negative", lambda: lpfast.lp_subspace(X, 2, weights=-np.ones(12)), "weights"),
        ("lp_subspace-weights_zero", lambda: lpfast.lp_subspace(X, 2, weights=np.zeros(12)), "weights"),
        ("lp_subspace-weights_length", lambda: lpfast.lp_subspace(X, 2, weights=np.ones(11)), "weights"),
        ("subspace_cost-basis_rows", lambda: lpfast.subspace_cost(X, np.eye(3)[:, :2]), "basis"),
        ("subspace_cost-p_neg", lambda: lpfast.subspace_cost(X, BASIS, -1.0), "p"),
        ("lewis_weights-p_4", lambda: lpfast.lewis_weights(X, 4.0), "p"),
        ("lewis_weights-p_0.5", lambda: lpfast.lewis_weights(X, 0.5), "p"),
        ("lewis_weights-method", lambda: lpfast.lewis_weights(X, method="fast"), "method"),
        ("lewis_weights-max_iter0", lambda: lpfast.lewis_weights(X, max_iter=0), "max_iter"),
        ("lewis_weights-seed_neg", lambda: lpfast.lewis_weights(X, method="sketch", seed=-1), "seed"),
        ("lewis_sample-m0", lambda: lpfast.lewis_sample(X, 0), "m"),
        ("lewis_sample-m_neg", lambda: lpfast.lewis_sample(X, -3), "m"),
        ("lewis_sample-uniform", lambda: lpfast.lewis_sample(X, 5, uniform=1.5), "uniform"),
        ("k_subspaces-K0", lambda: lpfast.k_subspaces(X, 0, 1), "n_subspaces"),
        ("k_subspaces-K_too_large", lambda: lpfast.k_subspaces(X, 13, 1), "n_subspaces"),
        ("k_subspaces-dim_eq_d", lambda: lpfast.k_subspaces(X, 2, 4), "dim"),
        ("k_subspaces-dim0", lambda: lpfast.k_subspaces(X, 2, 0), "dim"),
        ("k_subspaces-K_times_dim", lambda: lpfast.k_subspaces(X, 5, 3), "n_subspaces"),
        ("k_subspaces-p_below_1", lambda: lpfast.k_subspaces(X, 2, 1, p=0.5), "p"),
        ("k_subspaces-seeding", lambda: lpfast.k_subspaces(X, 2, 1, seeding="kmeans"), "seeding"),
        ("k_subspaces-n_init0", lambda: lpfast.k_subspaces(X, 2, 1, n_init=0), "n_init"),
        ("k_subspaces-seed_neg", lambda: lpfast.k_subspaces(X, 2, 1, seed=-1), "seed"),
        ("k_subspaces-init_bases_shape", lambda: lpfast.k_subspaces(X, 2, 1, init_bases=np.ones((3, 4, 1))),
         "init_bases"),
        # issue 18 item 11: lp_subspace refuses a rank-deficient init, k_subspaces must too
        ("k_subspaces-init_bases_rank_deficient",
         lambda: lpfast.k_subspaces(X, 2, 2, init_bases=np.ones((2, 4, 2))), "init_bases"),
        ("kron_factor_shapes-m0", lambda: lpfast.kron_factor_shapes(0, 4), "m"),
        ("kron_factor_shapes-n_neg", lambda: lpfast.kron_factor_shapes(4, -4), "n"),
        ("kron_factor_shapes-limit0", lambda: lpfast.kron_factor_shapes(4, 4, 0), "limit"),
        ("kron_factor_shapes-float", lambda: lpfast.kron_factor_shapes(4.0, 4), "m"),
        ("nearest_kronecker-shape_mismatch", lambda: lpfast.nearest_kronecker(W66, (2, 2), (3, 2)), "a_shape"),
        ("nearest_kronecker-shape_neg", lambda: lpfast.nearest_kronecker(W66, (-2, -3), (-3, -2)), "a_shape"),
        ("nearest_kronecker-shape_str", lambda: lpfast.nearest_kronecker(W66, "2x3", (3, 2)), "a_shape"),
        ("nearest_kronecker-rank0", lambda: lpfast.nearest_kronecker(W66, (2, 3), (3, 2), 0), "rank"),
        ("nearest_kronecker-rank_too_large", lambda: lpfast.nearest_kronecker(W66, (2, 3), (3, 2), 7), "rank"),
        # issue 18 item 10: argmax of an empty sequence
        ("nearest_kronecker-empty", lambda: lpfast.nearest_kronecker(np.zeros((0, 6)), (0, 3), (1, 2)), "W"),
        ("doped_kp_fit-empty", lambda: lpfast.doped_kp_fit(np.zeros((0, 0)), density=0.1), "W"),
        ("doped_kp_fit-density", lambda: lpfast.doped_kp_fit(W66, (2, 3), (3, 2), 1.5), "density"),
        ("doped_kp_fit-density_nan", lambda: lpfast.doped_kp_fit(W66, (2, 3), (3, 2), float("nan")), "density"),
        ("doped_kp_fit-both", lambda: lpfast.doped_kp_fit(W66, (2, 3), (3, 2), 0.1, ratio=2.0), "density"),
        ("doped_kp_fit-ratio", lambda: lpfast.doped_kp_fit(W66, ratio=0.5), "ratio"),
        ("doped_kp_fit-one_shape", lambda: lpfast.doped_kp_fit(W66, (2, 3), density=0.1), "b_shape"),
        ("doped_kp_fit-n_iter_neg", lambda: lpfast.doped_kp_fit(W66, (2, 3), (3, 2), 0.1, n_iter=-1), "n_iter"),
        ("doped_kp_fit_calibrated-ridge", lambda: lpfast.doped_kp_fit_calibrated(
            W66, (2, 3), (3, 2), 0.1, input_gram=GRAM6, ridge=-1.0), "ridge"),
        ("doped_kp_fit_calibrated-gram_shape", lambda: lpfast.doped_kp_fit_calibrated(
            W66, (2, 3), (3, 2), 0.1, input_gram=np.eye(5)), "input_gram"),
        ("doped_kp_fit_calibrated-start", lambda: lpfast.doped_kp_fit_calibrated(
            W66, (2, 3), (3, 2), 0.1, start=5), "start"),
        ("lowrank_fit-rank0", lambda: lpfast.lowrank_fit(W66, 0), "rank"),
        ("lowrank_fit-rank_too_large", lambda: lpfast.lowrank_fit(W66, 7), "rank"),
        ("lowrank_fit-both_grams", lambda: lpfast.lowrank_fit(W66, 2, input_gram=GRAM6, input_scale=np.ones(6)),
         "input_gram"),
        ("lowrank_fit-gram_asymmetric", lambda: lpfast.lowrank_fit(W66, 2, input_gram=np.triu(GRAM6)),
         "input_gram"),
        ("lowrank_fit-scale_negative", lambda: lpfast.lowrank_fit(W66, 2, input_scale=-np.ones(6)),
         "input_scale"),
        ("lowrank_sparse_fit-density", lambda: lpfast.lowrank_sparse_fit(W66, 2, -0.1), "density"),
        ("calibration_error-W_hat_shape", lambda: lpfast.calibration_error(W66, np.ones((6, 5))), "W_hat"),
        ("calibration_error-W_hat_pair", lambda: lpfast.calibration_error(W66, (np.ones((6, 2)), np.ones((3, 6)))),
         "W_hat"),
        ("row_doped_fit-method", lambda: lpfast.row_doped_fit(X, "pca", 30), "method"),
        ("row_doped_fit-budget0", lambda: lpfast.row_doped_fit(X, "svd", 0), "budget"),
        ("row_doped_fit-budget_small", lambda: lpfast.row_doped_fit(X, "svd", 3), "budget"),
        ("row_doped_fit-svd_p", lambda: lpfast.row_doped_fit(X, "svd", 30, p=1.0), "p"),
        ("row_doped_fit-n_subspaces_missing", lambda: lpfast.row_doped_fit(X, "projective", 30), "n_subspaces"),
        ("row_doped_fit-rank_neg", lambda: lpfast.row_doped_fit(X, "svd", 30, rank=-1), "rank"),
        ("row_doped_fit-n_exact_too_large", lambda: lpfast.row_doped_fit(X, "svd", 30, n_exact=13), "n_exact"),
        ("row_doped_fit-fractions", lambda: lpfast.row_doped_fit(X, "svd", 30, exact_fractions=(2.0,)),
         "exact_fractions"),
        ("usage_weights-negative", lambda: lpfast.usage_weights(-np.ones(3)), "counts"),
        ("usage_weights-power", lambda: lpfast.usage_weights(np.ones(3), power=-1.0), "power"),
        ("usage_weights-floor", lambda: lpfast.usage_weights(np.ones(3), floor=-1.0), "floor"),
        ("usage_weights-normalize", lambda: lpfast.usage_weights(np.ones(3), normalize="max"), "normalize"),
        ("usage_weights-all_zero", lambda: lpfast.usage_weights(np.zeros(3), floor=0.0), "counts"),
        ("hidden_keep_count-zero", lambda: lpfast.hidden_keep_count(0, 4), "keep"),
        ("hidden_keep_count-fraction", lambda: lpfast.hidden_keep_count(1.5, 4), "keep"),
        ("hidden_keep_count-nan", lambda: lpfast.hidden_keep_count(float("nan"), 4), "keep"),
        # issue 18 item 11: returned 1 (unit) of 0
        ("hidden_keep_count-h0", lambda: lpfast.hidden_keep_count(0.5, 0), "h"),
        ("prune_hidden_units-keep", lambda: lpfast.prune_hidden_units(W66, GRAM6, 7), "keep"),
        ("prune_hidden_units-score", lambda: lpfast.prune_hidden_units(W66, GRAM6, 2, score="obs"), "score"),
        ("prune_hidden_units-ridge", lambda: lpfast.prune_hidden_units(W66, GRAM6, 2, ridge=-1.0), "ridge"),
        ("prune_hidden_units-gram_shape", lambda: lpfast.prune_hidden_units(W66, np.eye(5), 2), "hidden_gram"),
        ("plan_compression-ratio", lambda: lpfast.plan_compression(X, 1.0), "ratio"),
        # issue 18 item 10
        ("plan_compression-candidates_int", lambda: lpfast.plan_compression(X, 2.0, candidates=5), "candidates"),
        ("plan_compression-candidates_name", lambda: lpfast.plan_compression(X, 2.0, candidates=["pca"]),
         "candidates"),
        ("plan_compression-k_values_neg", lambda: lpfast.plan_compression(X, 2.0, k_values=(-1,)), "k_values"),
        ("plan_compression-p_values", lambda: lpfast.plan_compression(X, 2.0, p_values=(0.5,)), "p_values"),
        ("plan_compression-callback", lambda: lpfast.plan_compression(X, 2.0, candidates=["svd"], callback=3),
         "callback"),
        ("set_num_threads-neg", lambda: lpfast.set_num_threads(-2), "n"),
        ("set_num_threads-float", lambda: lpfast.set_num_threads(1.5), "n"),
        ("DopedKronecker.from_dict-None", lambda: lpfast.DopedKronecker.from_dict(None), "d"),
        ("DopedKronecker.from_dict-missing", lambda: lpfast.DopedKronecker.from_dict({"A": A23}), "d"),
        # issue 18 item 10: a bare KeyError: 'S_indices'
        ("DopedKronecker.from_dict-partial_S", lambda: lpfast.DopedKronecker.from_dict(
            {"A": A23, "B": B32, "S_data": np.ones(1)}), "d"),
        ("LowRankSparse.from_dict-None", lambda: lpfast.LowRankSparse.from_dict(None), "d"),
        ("LowRankSparse.from_dict-partial_S", lambda: lpfast.LowRankSparse.from_dict(
            {"U": np.ones((6, 2)), "V": np.ones((2, 6)), "S_indptr": np.zeros(7, int)}), "d"),
        ("RowDoped.from_dict-None", lambda: lpfast.RowDoped.from_dict(None), "state"),
        ("KSubspaces.predict-wrong_d", lambda: _ksub_predict(np.ones((2, 3))), "Y"),
        ("DopedLSTMRuntime-layers_int", lambda: lpfast.DopedLSTMRuntime(5), "layers"),
        ("DopedLSTMRuntime-layers_empty", lambda: lpfast.DopedLSTMRuntime([]), "layers"),
        ("DopedLSTMRuntime-layer_arrays", lambda: lpfast.DopedLSTMRuntime([(A23, B32, None)]), "layers"),
        ("LowRankSparse-inner", lambda: lpfast.LowRankSparse(np.ones((6, 2)), np.ones((3, 6))), "U"),
        ("LowRankSparse.__call__-width", lambda: _lrs_call(np.ones((2, 5))), "x"),
        ("DopedKronecker.__call__-width", lambda: _dk_call(np.ones((2, 5))), "x"),
        ("doped_kp_matmul-out_shape", lambda: lpfast.doped_kp_matmul(X6, A23, B32, out=np.empty((4, 5))), "out"),
        ("doped_kp_matmul-out_dtype", lambda: lpfast.doped_kp_matmul(
            X6, A23, B32, out=np.empty((4, 6), np.float32)), "out"),
        ("doped_kp_matmul-out_list", lambda: lpfast.doped_kp_matmul(X6, A23, B32, out=[0.0] * 24), "out"),
    ]
    return [pytest.param(c, a, id=i) for i, c, a in rows]


SCALAR_COVERED = ("kron_factor_shapes", "hidden_keep_count", "set_num_threads", "RowDoped",
                  "DopedLSTMRuntime")


@pytest.mark.parametrize("call, name", _scalar_cases())
def test_scalar_arguments(call, name):
    assert_rejects(call, name)


# -- mixed float32/float64: a TypeError (README: no silent upcast of a large array) --------------

X32 = X.astype(np.float32)


@pytest.mark.parametrize("call, name", [
    pytest.param(lambda: lpfast.doped_kp_matmul(X6.astype(np.float32), A23, B32), "x", id="doped_kp_matmul"),
    pytest.param(lambda: lpfast.DopedKronecker(A23.astype(np.float32), B32), "A", id="DopedKronecker"),
    pytest.param(lambda: lpfast.LowRankSparse(np.ones((6, 2), np.float32), np.ones((2, 6))), "U",
                 id="LowRankSparse"),
    # issue 18 item 11: these converted silently (per-row weights are converted on purpose,
    # as the README says: they are (n,), not a second copy of the data)
    pytest.param(lambda: lpfast.subspace_cost(X32, BASIS), "basis", id="subspace_cost-basis"),
    pytest.param(lambda: lpfast.k_subspaces(X32, 2, 1, seed=0, n_init=1).predict(X[:2]), "Y",
                 id="KSubspaces.predict-Y"),
    pytest.param(lambda: lpfast.lp_subspace(X32, 2, init=BASIS), "init", id="lp_subspace-init"),
    pytest.param(lambda: lpfast.k_subspaces(X32, 2, 1, init_bases=np.stack([BASIS[:, :1]] * 2)),
                 "init_bases", id="k_subspaces-init_bases"),
])
def test_mixed_float_dtypes(call, name):
    assert_rejects(call, name, TypeError)


# -- issue 18's silent wrong results, crashes and hangs ------------------------------------------


def test_out_may_not_overlap_A():
    """Issue 18 item 6: out= over A overwrote A and returned a wrong product."""
    r = np.random.default_rng(0)
    A, B, x = r.standard_normal((3, 4)), r.standard_normal((4, 5)), r.standard_normal((1, 20))
    A_before = A.copy()
    with pytest.raises(ValueError, match="out"):
        lpfast.doped_kp_matmul(x, A, B, out=A.reshape(-1)[:12].reshape(1, 12))
    np.testing.assert_array_equal(A, A_before)


def test_out_may_not_overlap_bias_or_S():
    r = np.random.default_rng(0)
    A, B, x = r.standard_normal((2, 3)), r.standard_normal((3, 2)), r.standard_normal((1, 6))
    bias = np.zeros((1, 6))
    with pytest.raises(ValueError, match="out"):
        lpfast.doped_kp_matmul(x, A, B, bias=bias[0], out=bias)
    S = sp.random(6, 6, density=1.0, format="csr", random_state=0)
    data = S.data
    with pytest.raises(ValueError, match="out"):
        lpfast.doped_kp_matmul(x, A, B, S, out=data[:6].reshape(1, 6))


def test_low_rank_sparse_refuses_nan_x():
    """Issue 18 item 7: NaN in x returned NaN, unlike DopedKronecker."""
    op = lpfast.LowRankSparse(np.ones((4, 3)), np.ones((3, 5)))
    assert_rejects(lambda: op(np.full((1, 5), np.nan)), "x", ValueError)


def _run_python(code: str, timeout: float, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": PYTHONPATH, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT)


@pytest.mark.parametrize("side", [1_000_000_007, 2**61 - 1])
def test_kron_factor_shapes_of_huge_primes_do_not_hang(side):
    """Issue 18 item 8: (1e9+7, 1e9+7) took 98 s and (2**61-1, 2**61-1) never finished. Either
    an answer or a ValueError naming m, in seconds (a subprocess, so a hang cannot stall
    the suite)."""
    code = f"""
        import lpfast
        try:
            shapes = lpfast.kron_factor_shapes({side}, {side})
        except ValueError as e:
            print("ValueError", e)
        else:
            assert all(a[0] * b[0] == {side} and a[1] * b[1] == {side} for a, b in shapes), shapes
            print("ok", shapes)
        """
    try:
        proc = _run_python(code, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kron_factor_shapes({side}, {side}) still running after 60 s")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("ok") or (out.startswith("ValueError") and names_argument(out[11:], "m")), out


# -- lpfast.torch -------------------------------------------------------------------------------

def _lt():
    torch = pytest.importorskip("torch")
    import lpfast.torch as lt

    return torch, lt


def _torch_cases():
    def dkl(**kw):
        torch, lt = _lt()
        args = dict(in_features=6, out_features=6, a_shape=(2, 3), b_shape=(3, 2), density=0.2)
        return lt.DopedKroneckerLinear(**{**args, **kw})

    def tensor(a, dtype="float64"):
        torch, _ = _lt()
        return torch.as_tensor(np.asarray(a), dtype=getattr(torch, dtype))

    def op(*args, **kw):
        _, lt = _lt()
        return lt.doped_kp_matmul(*args, **kw)

    rows = [
        ("DopedKroneckerLinear-in_features", lambda: dkl(in_features=-1), "in_features"),
        ("DopedKroneckerLinear-shapes", lambda: dkl(a_shape=(2, 2)), "a_shape"),
        ("DopedKroneckerLinear-density", lambda: dkl(density=2.0), "density"),
        ("DopedKroneckerLinear-rank", lambda: dkl(rank=0), "rank"),
        ("DopedKroneckerLinear-cmr", lambda: dkl(cmr=1.0), "cmr"),
        ("DopedKroneckerLinear-forward_width", lambda: dkl()(tensor(np.ones((2, 5)), "float32")),
         ("x", "input")),
        ("DopedKroneckerLinear.from_linear-not_linear", lambda: _lt()[1].DopedKroneckerLinear.from_linear(
            5, density=0.1), "linear"),
        ("LowRankLinear-rank0", lambda: _lt()[1].LowRankLinear(6, 6, 0), "rank"),
        ("LowRankLinear-in_features", lambda: _lt()[1].LowRankLinear(0, 6, 1), "in_features"),
        ("LowRankEmbedding-num", lambda: _lt()[1].LowRankEmbedding(-1, 4, 1), "num_embeddings"),
        ("LowRankEmbedding-padding_idx", lambda: _lt()[1].LowRankEmbedding(5, 4, 1, padding_idx=9),
         "padding_idx"),
        ("LowRankSparseLinear-density", lambda: _lt()[1].LowRankSparseLinear(6, 6, 1, density=-0.5), "density"),
        ("ProjectiveEmbedding-dim0", lambda: _lt()[1].ProjectiveEmbedding(10, 4, 2, 0), "dim"),
        ("ProjectiveEmbedding-n_subspaces", lambda: _lt()[1].ProjectiveEmbedding(10, 4, 0, 1), "n_subspaces"),
        ("RowDopedEmbedding-rank", lambda: _lt()[1].RowDopedEmbedding(10, 4, 0), "rank"),
        ("RowDopedEmbedding-method", lambda: _lt()[1].RowDopedEmbedding(10, 4, 1, method="pca"), "method"),
        ("RowDopedLinear-n_exact", lambda: _lt()[1].RowDopedLinear(4, 10, 1, n_exact=-1), "n_exact"),
        ("DopedLSTM-input_size", lambda: _lt()[1].DopedLSTM(-1, 4), "input_size"),
        ("DopedLSTM-density", lambda: _lt()[1].DopedLSTM(4, 4, density=2.0), "density"),
        # issue 18 item 11: p = -0.1 and NaN were accepted; integer values obscure
        ("co_matrix_dropout-p_neg", lambda: _lt()[1].co_matrix_dropout(tensor(np.ones(4)), -0.1), "p"),
        ("co_matrix_dropout-p_nan", lambda: _lt()[1].co_matrix_dropout(tensor(np.ones(4)), float("nan")), "p"),
        ("co_matrix_dropout-p_1", lambda: _lt()[1].co_matrix_dropout(tensor(np.ones(4)), 1.0), "p"),
        ("co_matrix_dropout-int_values", lambda: _lt()[1].co_matrix_dropout(
            tensor(np.ones(4), "int64"), 0.5), "values"),
        ("doped_kp_matmul-A_1d", lambda: op(tensor(X6), tensor(np.ones(3)), tensor(B32)), "A"),
        ("doped_kp_matmul-x_width", lambda: op(tensor(np.ones((2, 5))), tensor(A23), tensor(B32)), "x"),
        ("doped_kp_matmul-x_not_tensor", lambda: op(X6, tensor(A23), tensor(B32)), "x"),
        ("doped_kp_matmul-crow_out_of_range", lambda: op(
            tensor(X6), tensor(A23), tensor(B32), tensor(np.ones(1)), tensor([0, 1, 1, 1, 1, 1, 1], "int64"),
            tensor([10**6], "int64")), ("S_col_indices", "S")),
        ("doped_kp_matmul-crow_non_monotone", lambda: op(
            tensor(X6), tensor(A23), tensor(B32), tensor(np.ones(1)), tensor([0, 1, 0, 1, 1, 1, 1], "int64"),
            tensor([0], "int64")), ("S_crow_indices", "S")),
        ("Calibration.from_dict-None", lambda: _lt()[1].Calibration.from_dict(None), "d"),
        ("calibrate-model", lambda: _lt()[1].calibrate(5, []), "model"),
        ("compress-rules", lambda: _lt()[1].compress(_lt()[0].nn.Linear(4, 4), 5), "rules"),
        ("compress-model", lambda: _lt()[1].compress(5, {"*": "lowrank:2"}), "model"),
        ("parse_rule-garbage", lambda: _lt()[1].parse_rule("no equals sign"), "rule"),
        ("compress-method", lambda: _lt()[1].compress(_lt()[0].nn.Sequential(_lt()[0].nn.Linear(4, 4)),
                                                       {"0": "nope:2"}), "nope"),
        ("params_for_ratio-method", lambda: _lt()[1].params_for_ratio("nope", 6, 6, 2.0), "method"),
        ("params_for_ratio-ratio", lambda: _lt()[1].params_for_ratio("lowrank", 6, 6, 0.5), "ratio"),
        ("fit_linear-method", lambda: _lt()[1].fit_linear(_lt()[0].nn.Linear(6, 6), "nope", ratio=2.0), "method"),
        ("fit_linear-linear", lambda: _lt()[1].fit_linear(5, "lowrank", ratio=2.0), "linear"),
        # issue 18 item 10: plot_frontier(5, ...) failed obscurely
        ("plot_frontier-selections", lambda: _lt()[1].plot_frontier(5, "/tmp/never.png"), "selections"),
        ("DensitySchedule-initial", lambda: _lt()[1].DensitySchedule(2.0, 0.1, 0, 10), "initial"),
        ("DensitySchedule-end", lambda: _lt()[1].DensitySchedule(0.5, 0.1, 10, 5), "end"),
        ("SparsityAnnealer-layers", lambda: _lt()[1].SparsityAnnealer(5, _lt()[1].DensitySchedule(
            0.5, 0.1, 0, 10)), "layers"),
        ("register_method-fn", lambda: _lt()[1].register_method("mine", 5), "fn"),
        ("ffn_pairs-model", lambda: _lt()[1].ffn_pairs(5), "model"),
    ]
    return [pytest.param(c, a, id=i) for i, c, a in rows]


@not_under_sanitizer
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("call, name", _torch_cases())
def test_torch_arguments(call, name):
    assert_rejects(call, name)


def _tiny_pair():
    torch, lt = _lt()

    class FFN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(6, 6)

        def forward(self, x):
            return self.up(x)

    torch.manual_seed(0)
    return torch, lt, FFN()


@not_under_sanitizer
def test_distill_refuses_negative_seed():
    """Issue 18 item 11: distill(seed=-1) was accepted while the NumPy API refuses it."""
    torch, lt, model = _tiny_pair()
    import copy

    small = copy.deepcopy(model)
    lt.compress(small, {"up": "lowrank:2"}, progress=None)
    batches = [torch.randn(4, 6)]
    assert_rejects(lambda: lt.distill(small, model, batches, seed=-1, steps=1, progress=False), "seed")


@not_under_sanitizer
def test_calibration_load_of_garbage_names_the_file(tmp_path):
    """Issue 18 item 10: Calibration.load raised torch's UnpicklingError on a garbage file."""
    _, lt = _lt()
    for name, content in [("garbage.pt", b"\x00not a torch file" * 10), ("garbage.npz", b"PK\x03\x04junk")]:
        path = tmp_path / name
        path.write_bytes(content)
        assert_rejects(lambda: lt.Calibration.load(path), name)


# -- index buffers of a state_dict: checked once, at load (issue 18 item 2) ----------------------

def _doped_layer():
    torch, lt = _lt()
    torch.manual_seed(0)
    layer = lt.DopedKroneckerLinear.from_linear(torch.nn.Linear(16, 16), (4, 4), (4, 4), density=0.1)
    return torch, layer


def _lowrank_sparse_layer():
    torch, lt = _lt()
    torch.manual_seed(0)
    layer = lt.LowRankSparseLinear(16, 16, 2, density=0.1)
    return torch, layer


def _tamper(sd, key, fn):
    sd = dict(sd)
    sd[key] = fn(sd[key].clone())
    return sd


def _set(i, v):
    def f(t):
        t[i] = v
        return t
    return f


def _swap_crow(t):
    t[1], t[2] = t[2].clone(), t[1].clone()
    if t[1] == t[2]:
        t[2] = t[1] - 1 if t[1] > 0 else t[1] + 1
    t[1] = t[-1] + 1  # certainly non-monotone (and past the end)
    return t


BAD_STATES = [
    ("col_1e6", "S_col_indices", _set(0, 10**6)),
    ("col_neg", "S_col_indices", _set(0, -10**7)),
    ("col_just_past", "S_col_indices", _set(0, 16)),
    ("col_25_of_16", "S_col_indices", _set(-1, 25)),
    ("crow_non_monotone", "S_crow_indices", _swap_crow),
    ("crow_last_wrong", "S_crow_indices", _set(-1, 10**6)),
    ("col_float", "S_col_indices", lambda t: t.double()),
    ("crow_float", "S_crow_indices", lambda t: t.double()),
]


@not_under_sanitizer
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("make", [_doped_layer, _lowrank_sparse_layer], ids=["DopedKroneckerLinear",
                                                                               "LowRankSparseLinear"])
@pytest.mark.parametrize("case, key, fn", BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_state_dict_indices_checked_at_load(make, case, key, fn):
    """Out-of-range or non-monotone indices segfaulted or returned garbage in forward: the
    load must refuse them, naming the buffer (forward is never reached here)."""
    torch, layer = make()
    sd = _tamper(layer.state_dict(), key, fn)
    _, fresh = make()
    assert_rejects(lambda: fresh.load_state_dict(sd), key)


@not_under_sanitizer
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("make", [_doped_layer, _lowrank_sparse_layer], ids=["DopedKroneckerLinear",
                                                                               "LowRankSparseLinear"])
def test_state_dict_mixed_index_dtypes(make):
    """int32 crow with int64 col (issue 18 item 10: a pybind11 signature dump): either it
    works and agrees with the consistent layer, or a clear error names the buffer."""
    torch, layer = make()
    x = torch.randn(3, 16, dtype=next(layer.parameters()).dtype)
    want = layer(x)
    sd = _tamper(layer.state_dict(), "S_crow_indices", lambda t: t.to(torch.int32))
    sd["S_col_indices"] = sd["S_col_indices"].to(torch.int64)
    _, fresh = make()
    try:
        fresh.load_state_dict(sd)
        got = fresh(x)
    except ERRORS as e:
        assert names_argument(str(e), "S_crow_indices") or names_argument(str(e), "S_col_indices"), str(e)
        assert "\n" not in str(e).strip(), str(e)
    else:
        torch.testing.assert_close(got, want)


# -- the command line: exit code 2, one line naming the file or option ---------------------------


def _cli(args, tmp_path, timeout=300, **env):
    proc = subprocess.run([sys.executable, "-m", "lpfast", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH, **env})
    return proc


def assert_cli_error(proc, *names):
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert any(n in lines[0] for n in names), f"{lines[0]!r} names none of {names}"


class Evil:
    """Unpickling this creates a file: the code-execution probe of issue 18 item 1."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs for the CLI cases, made once."""
    torch, _ = _lt()
    d = tmp_path_factory.mktemp("cli")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    torch.save(model, d / "model.pt")
    good = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "garbage.pt").write_bytes(os.urandom(300))
    np.save(d / "matrix.npy", np.random.default_rng(0).standard_normal((40, 8)))
    good_npy = (d / "matrix.npy").read_bytes()
    (d / "truncated.npy").write_bytes(good_npy[: len(good_npy) // 2])
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage" + os.urandom(100))
    # a header that claims 2**40 x 800 float64 (5.8 TiB) over a few bytes of data
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 800), }"
    header = header + " " * (-(len(header) + 11) % 64) + "\n"
    (d / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                                 + header.encode() + b"\x00" * 64)
    torch.save({"not": "a calibration"}, d / "notcal.pt")
    (d / "adir").mkdir()
    marker = d / "pwned"
    with open(d / "evil.pt", "wb") as f:
        torch.save(Evil(marker), f)
    with open(d / "evil.pkl", "wb") as f:
        pickle.dump(Evil(marker), f)
    return d


RULE = "--rule=0=lowrank:2"

CLI_CASES = [
    # (id, args (F: the shared input files, T: this test's own directory), names of which the
    # message must contain one)
    ("compress-missing", ["compress", "{F}/missing.pt", "{T}/out.pt", RULE], ["missing.pt"]),
    ("compress-directory", ["compress", "{F}/adir", "{T}/out.pt", RULE], ["adir"]),
    ("compress-truncated", ["compress", "{F}/truncated.pt", "{T}/out.pt", RULE], ["truncated.pt"]),
    ("compress-garbage", ["compress", "{F}/garbage.pt", "{T}/out.pt", RULE], ["garbage.pt"]),
    ("compress-npy", ["compress", "{F}/matrix.npy", "{T}/out.pt", RULE], ["matrix.npy"]),
    ("compress-calibration", ["compress", "{F}/model.pt", "{T}/out.pt", RULE, "--calibration",
                              "{F}/notcal.pt"], ["notcal.pt", "--calibration"]),
    ("compress-threads", ["compress", "{F}/model.pt", "{T}/out.pt", RULE, "--threads", "-2"], ["--threads"]),
    ("compress-out_dir", ["compress", "{F}/model.pt", "{F}/nodir/out.pt", RULE], ["nodir"]),
    ("compress-report_dir", ["compress", "{F}/model.pt", "{T}/out.pt", RULE, "--report-json",
                             "{F}/nodir/r.json"], ["nodir", "--report-json"]),
    ("compress-rule", ["compress", "{F}/model.pt", "{T}/out.pt", "--rule", "garbage"], ["--rule"]),
    ("demo-density", ["demo", "--density", "2"], ["--density"]),
    ("demo-density_neg", ["demo", "--density", "-0.5"], ["--density"]),
    ("plan-missing", ["plan", "{F}/missing.npy", "--ratio", "2"], ["missing.npy"]),
    ("plan-truncated_npy", ["plan", "{F}/truncated.npy", "--ratio", "2"], ["truncated.npy"]),
    ("plan-garbage_npy", ["plan", "{F}/garbage.npy", "--ratio", "2"], ["garbage.npy"]),
    ("plan-huge_header", ["plan", "{F}/huge.npy", "--ratio", "2"], ["huge.npy"]),
    ("plan-ratio", ["plan", "{F}/matrix.npy", "--ratio", "0.5"], ["--ratio", "ratio"]),
    ("plan-threads", ["plan", "{F}/matrix.npy", "--ratio", "2", "--threads", "-2"], ["--threads"]),
    ("plan-json_dir", ["plan", "{F}/matrix.npy", "--ratio", "2", "--candidates", "svd", "--json",
                       "{F}/nodir/p.json"], ["nodir", "--json"]),
    ("plan-plot_dir", ["plan", "{F}/matrix.npy", "--ratio", "2", "--candidates", "svd", "--plot",
                       "{F}/nodir/p.png"], ["nodir", "--plot"]),
    ("plan-pickle", ["plan", "{F}/model.pt", "--ratio", "2"], ["model.pt"]),
]


@not_under_sanitizer
@pytest.mark.parametrize("args, names", [pytest.param(a, n, id=i) for i, a, n in CLI_CASES])
def test_cli_errors(files, args, names, tmp_path):
    args = [a.replace("{F}", str(files)).replace("{T}", str(tmp_path)) for a in args]
    proc = _cli(args, tmp_path)
    assert_cli_error(proc, *names)
    assert not (tmp_path / "out.pt").exists(), "a failed run left an output"


@not_under_sanitizer
@pytest.mark.parametrize("name", ["evil.pt", "evil.pkl"])
@pytest.mark.parametrize("command", ["compress", "plan"])
def test_cli_never_unpickles_by_default(files, name, command, tmp_path):
    """Issue 18 item 1: compress unpickled IN.pt unconditionally; a crafted file ran code."""
    marker = files / "pwned"
    marker.unlink(missing_ok=True)
    extra = [str(tmp_path / "out.pt"), RULE] if command == "compress" else ["--ratio", "2"]
    proc = _cli([command, files / name, *extra], tmp_path)
    assert not marker.exists(), f"{command} ran code from {name}"
    assert_cli_error(proc, name)
