"""A per-layer compression planner: fit every method at the same budget, measure, rank.

Which factorization compresses a layer best (SVD, a robust lp subspace, k subspaces; with or
without rows stored exactly) depends on the layer and on which rows matter, so
``plan_compression`` measures instead of guessing: at the parameter budget ``n * d / ratio``
it fits each candidate with and without row doping (the split between rank and exact rows
searched over a small grid), scores them by weighted relative reconstruction error, and
returns a ranked table with the best fitted :class:`lpfast.RowDoped`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

import numpy as np

from ._row_doping import (Effort, SplitResult, build_result, dope_rounds, grid_extender,
                          make_fitter, max_rank, min_budget, n_params_formula, rank_cap,
                          search_splits, split_history, splits_for)
from ._validate import (as_callable, as_float, as_fractions, as_int, as_matrix, as_ratio,
                        as_row_weights, as_seed_sequence)
from .plan_result import Plan
from .row_doped_result import kind_of

__all__ = ["Plan", "plan_compression"]

#: Budget fractions spent on exact rows tried for each doped candidate.
DEFAULT_DOPED_FRACTIONS = (0.0625, 0.125, 0.25, 0.5)
#: Screening effort: enough to rank candidates; the winner is refit with the full effort.
SCREEN = Effort(max_iter=10, tol=1e-4, refit_iter=3, n_init=2)
#: The winner's refit: one warm-started fit of at most ``refit_iter`` steps to tol 1e-6.
REFIT = Effort(max_iter=20, tol=1e-6, refit_iter=20, n_init=1)


def _parse_candidate(spec: Any) -> dict[str, Any]:
    """{"method", "p", "n_subspaces"} from "svd", "lp:1.5", "projective:5" or a dict."""
    if isinstance(spec, str):
        head, _, arg = spec.partition(":")
        head = head.strip().lower()
        if head == "svd" and not arg:
            return {"method": "svd", "p": 2.0, "n_subspaces": 1}
        try:
            if head == "lp":
                return {"method": "lp", "p": float(arg) if arg else 1.0, "n_subspaces": 1}
            if head in ("projective", "proj"):
                k, _, p = arg.partition(":")
                return {"method": "projective", "n_subspaces": int(k),
                        "p": float(p) if p else 2.0}
        except ValueError:
            pass
        msg = (f"candidates: cannot parse {spec!r}; expected 'svd', 'lp:<p>', "
               f"'projective:<k>[:<p>]' or a dict")
        raise ValueError(msg)
    if isinstance(spec, dict):
        method = spec.get("method")
        if method not in ("svd", "lp", "projective"):
            msg = f"candidates: expected method 'svd', 'lp' or 'projective', got {spec!r}"
            raise ValueError(msg)
        unknown = set(spec) - {"method", "p", "n_subspaces"}
        if unknown:
            msg = f"candidates: unknown keys {sorted(unknown)} in {spec!r}"
            raise ValueError(msg)
        p = spec.get("p", 2.0 if method != "lp" else 1.0)
        K = spec.get("n_subspaces", 1 if method != "projective" else None)
        if K is None:
            msg = f"candidates: projective needs 'n_subspaces', got {spec!r}"
            raise ValueError(msg)
        return {"method": method, "p": p, "n_subspaces": K}
    msg = f"candidates: expected strings or dicts, got {type(spec).__name__}"
    raise TypeError(msg)


def _check_candidate(c: dict[str, Any]) -> dict[str, Any]:
    p = as_float(c["p"], "candidates: p", low=1.0)
    if c["method"] == "svd" and p != 2.0:
        msg = "candidates: 'svd' is the p = 2 fit; use 'lp' for other p"
        raise ValueError(msg)
    K = as_int(c["n_subspaces"], "candidates: n_subspaces", low=1)
    if c["method"] != "projective" and K != 1:
        msg = "candidates: n_subspaces is only for 'projective'"
        raise ValueError(msg)
    return {"method": c["method"], "p": p, "n_subspaces": K}


def _name(c: dict[str, Any], doped: bool) -> str:
    if c["method"] == "svd":
        base = "svd"
    elif c["method"] == "lp":
        base = f"lp(p={c['p']:g})"
    else:
        base = f"proj(k={c['n_subspaces']}" + (f", p={c['p']:g})" if c["p"] != 2.0 else ")")
    return base + ("+doped" if doped else "")


def _row(c, doped, res, E_shape, w, K, history):
    n, d = E_shape
    n_params = n_params_formula(c["method"], n, d, res.rank, res.n_exact, K)
    keep = np.ones(n, dtype=bool)
    keep[res.exact] = False
    return {"candidate": _name(c, doped), "method": c["method"], "p": c["p"],
            "n_subspaces": K, "doped": doped, "rank": res.rank, "n_exact": res.n_exact,
            "n_params": n_params, "ratio": n * d / n_params, "error": res.error,
            "lp_cost": float(w[keep] @ (res.r2[keep] ** (c["p"] / 2))),
            "seconds": res.seconds, "splits": history}


def plan_compression(E: Any, ratio: float, *, weights: Any = None, candidates: Any = None,
                     seed: Any = None, p_values: Any = (1, 1.5), k_values: Any = (2, 5, 10),
                     doping: Any = (False, True),
                     exact_fractions: Any = DEFAULT_DOPED_FRACTIONS, n_rounds: int = 1,
                     extend_grid: bool = True, refit: bool = True, verbose: bool = False,
                     callback: Callable[[dict[str, Any]], Any] | None = None) -> Plan:
    """Fit SVD, lp and k-subspace factorizations (with and without row doping) at one
    parameter budget and rank them by weighted reconstruction error.

    Parameters
    ----------
    E : array_like, shape (n, d)
        Embedding table or Linear weight (rows = output units); float32 or float64 (kept),
        never modified or copied (except once to C order if needed).
    ratio : float > 1
        Compression ratio: every candidate stores at most ``floor(n * d / ratio)`` numbers
        (factor entries, exact rows, their indices and projective labels all count).
    weights : array_like, shape (n,), optional
        Row weights (e.g. ``lpfast.usage_weights(counts)``): fits, choice of exact rows and
        the score use them. Default 1.
    candidates : sequence of str or dict, optional
        Methods to try: ``"svd"``, ``"lp:<p>"``, ``"projective:<k>"`` or
        ``"projective:<k>:<p>"``, or dicts ``{"method", "p", "n_subspaces"}``. Default:
        ``"svd"``, ``"lp:p"`` for p in ``p_values``, ``"projective:k"`` (p = 2) for k in
        ``k_values``.
    seed : int, SeedSequence, numpy Generator or None
        Randomness of the k-subspace restarts (candidate i draws from child i of
        ``SeedSequence(seed)``). Same seed, same plan (timings aside), for a given thread
        count.
    p_values, k_values : sequences
        Build the default candidates (ignored when ``candidates`` is given).
    doping : sequence of bool
        Fit each candidate without (False) and/or with (True) row doping.
    exact_fractions : sequence of float in (0, 1]
        Split grid of the doped fits: the share of the budget spent on exact rows (see
        :func:`lpfast.row_doped_fit`); the best split is reported. With ``extend_grid``,
        while the best split is at an end of the grid, the fraction halfway to 1 (or half
        the smallest) is tried too, up to 3 more splits per candidate.
    n_rounds : int >= 0
        Refits without the exact rows per split during screening.
    refit : bool
        Refit the winner once more, warm-started from its screening fit without its exact
        rows (lp: up to 20 IRLS steps, projective: up to 20 Lloyd iterations, to tol 1e-6),
        then choose its exact rows again; kept only if the error is lower.
    verbose : bool
        Print each fitted row to stderr as it finishes.
    callback : callable(row), optional
        Called with each row dict as it finishes (plus ``index`` and ``total``: rows done
        and expected).

    Returns
    -------
    Plan
        ``rows`` (ranked table), ``best`` (:class:`lpfast.RowDoped`), ``str(plan)``,
        ``plan.to_markdown()``.

    Raises
    ------
    ValueError
        ``ratio <= 1``, a budget no candidate fits, wrong ``weights`` length, NaN/Inf in
        ``E`` or ``weights``, unparseable ``candidates``.

    Notes
    -----
    Screening (every candidate): lp fits of at most 10 IRLS steps (tol 1e-4), k-subspace
    fits with 2 restarts and at most 10 Lloyd iterations, warm refits of 3 steps in the
    doping rounds. For a final fit at full effort of the chosen configuration, call
    ``row_doped_fit(E, row["method"], plan.budget, rank=row["rank"],
    n_exact=row["n_exact"], ...)``.

    Per candidate: one fit at the undoped rank, then for doping ``n_rounds`` warm refits
    per split (4 grid splits plus up to 3 extensions; see :func:`lpfast.row_doped_fit`),
    each O(n d^2) per step (plus O(n d K j) assignments for k subspaces) and one O(n d k)
    residual pass per round. On 30522 x 384 float32 at ratio 8, on the 2-core development
    machine shared with other jobs (load 3-4), the whole default plan took 27-31 s; see
    bench/bench_planner.py for the time per candidate.
    """
    t_start = time.perf_counter()
    E = as_matrix(E, "E", min_rows=2, min_cols=2)  # own float dtype, else float64
    n, d = E.shape
    ratio = as_ratio(ratio)
    budget = int(math.floor(n * d / ratio))
    w = as_row_weights(weights, n, rows="E", ones=True)
    cands = _candidates(candidates, p_values, k_values)
    flags = tuple(doping)
    if not flags or any(not isinstance(f, (bool, np.bool_)) for f in flags):
        msg = f"doping: expected a non-empty sequence of bools, got {doping!r}"
        raise ValueError(msg)
    fractions = tuple(f for f in as_fractions(exact_fractions, "exact_fractions") if f > 0)
    if True in flags and not fractions:
        msg = "exact_fractions: doping needs at least one fraction > 0"
        raise ValueError(msg)
    n_rounds = as_int(n_rounds, "n_rounds", low=0)
    as_callable(callback, "callback", "(row)")
    children = as_seed_sequence(seed).spawn(len(cands))

    sq = w * np.einsum("ij,ij->i", E, E, dtype=np.float64)
    screen = _Screening(E, w, float(sq.sum()), np.argsort(-sq, kind="stable"), budget,
                        tuple(sorted(set(flags))), fractions, n_rounds, extend_grid)
    emit = _reporter(verbose, callback, screen.rows, len(cands) * len(screen.flags))
    for c, child in zip(cands, children):
        screen.candidate(c, np.random.default_rng(child), emit)
    if not screen.rows:
        msg = (f"ratio: {ratio} gives a budget of {budget} parameters, too small for every "
               f"candidate on a {n} x {d} matrix")
        raise ValueError(msg)

    rows = screen.rows
    order = sorted(range(len(rows)), key=lambda i: rows[i]["error"])  # stable: ties in order
    c, res = screen.states[order[0]]
    row = rows[order[0]]
    for r in rows:
        r["refit"] = False
    if refit and c["method"] != "svd":
        res = screen.refit_winner(c, res, row)
    best = build_result(E, w, c["method"], c["p"], c["n_subspaces"], res, budget, row["splits"])
    ranked = [rows[i] for i in order]
    for place, r in enumerate(ranked, 1):
        r["place"] = place
    return Plan(ranked, best, screen.skipped, budget, ratio, (n, d),
                time.perf_counter() - t_start)


def _candidates(candidates: Any, p_values: Any, k_values: Any) -> list[dict[str, Any]]:
    """The checked candidate dicts: the given ones, else the defaults from p and k values."""
    def items(value: Any, name: str, what: str) -> list[Any]:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            msg = f"{name}: expected a sequence of {what}, got {value!r}"
            raise TypeError(msg)
        return list(value)

    if candidates is None:
        # Checked under their own names: a bad k would otherwise be blamed on `candidates`.
        ps = [as_float(p, "p_values", low=1.0) for p in items(p_values, "p_values", "numbers")]
        ks = [as_int(k, "k_values", low=1) for k in items(k_values, "k_values", "integers")]
        specs = (["svd"] + [{"method": "lp", "p": p} for p in ps]
                 + [{"method": "projective", "n_subspaces": k} for k in ks])
    else:
        if isinstance(candidates, (str, dict)):
            candidates = [candidates]
        specs = items(candidates, "candidates", "str or dict")
        if not specs:
            msg = "candidates: expected at least one candidate"
            raise ValueError(msg)
    return [_check_candidate(_parse_candidate(s)) for s in specs]


def _reporter(verbose: bool, callback: Callable[[dict[str, Any]], Any] | None,
              rows: list[dict[str, Any]], expected: int) -> Callable[[dict[str, Any]], None]:
    """What runs as each row finishes: the verbose line and the user's callback."""
    def emit(row: dict[str, Any]) -> None:
        if verbose:
            print(f"plan_compression [{len(rows)}/{expected}] {row['candidate']:<22s} "
                  f"dim {row['rank']:4d}  exact rows {row['n_exact']:6d}  "
                  f"error {row['error']:.5g}  ({row['seconds']:.2f} s)",
                  file=sys.stderr, flush=True)
        if callback is not None:
            callback(dict(row, index=len(rows), total=expected))

    return emit


class _Screening:
    """The screening of the candidates at one budget: their rows, split results, skips."""

    def __init__(self, E: np.ndarray, w: np.ndarray, total: float, heavy: np.ndarray,
                 budget: int, flags: tuple[bool, ...], fractions: tuple[float, ...],
                 n_rounds: int, extend_grid: bool):
        self.E, self.w, self.total, self.heavy, self.budget = E, w, total, heavy, budget
        self.flags, self.fractions = flags, fractions
        self.n_rounds, self.extend_grid = n_rounds, extend_grid
        self.rows: list[dict[str, Any]] = []
        self.states: list[tuple[dict[str, Any], SplitResult]] = []
        self.skipped: list[dict[str, Any]] = []

    def candidate(self, c: dict[str, Any], seed: np.random.Generator,
                  emit: Callable[[dict[str, Any]], None]) -> None:
        """Fit one candidate undoped and/or doped (one shared fit at the undoped rank)."""
        (n, d), budget = self.E.shape, self.budget
        kind, K = kind_of(c["method"]), c["n_subspaces"]
        least = min_budget(kind, n, d, K)
        if K > n or budget < least:
            for doped in self.flags:
                self.skipped.append({"candidate": _name(c, doped),
                                     "reason": f"budget {budget} is below the {least} of rank 1"})
            return
        top = min(max_rank(kind, n, d, budget, 0, K), rank_cap(kind, n, d, 0, K))
        splits, extend = [(top, 0)], None
        if True in self.flags:
            splits += [s for s in splits_for(kind, n, d, budget, K, self.fractions) if s[1] > 0]
            if self.extend_grid:
                extend = grid_extender(kind, n, d, budget, K, self.fractions)
        fitter = make_fitter(self.E, self.w, c["method"], c["p"], K, SCREEN, seed)
        results = search_splits(fitter, self.w, self.heavy, self.total, splits, self.n_rounds,
                                extend=extend)
        hist = split_history(c["method"], n, d, K, results)
        if False in self.flags:
            self._add(c, False, results[0], hist[:1], emit)
        doped = results[1:]
        if True in self.flags:
            if not doped:
                self.skipped.append({"candidate": _name(c, True),
                                     "reason": "no split with exact rows fits the budget"})
                return
            best = min(doped, key=lambda r: r.error)
            row = self._add(c, True, best, hist[1:], None)
            row["seconds"] = sum(r.seconds for r in doped) + (
                0.0 if False in self.flags else results[0].seconds)
            emit(row)

    def _add(self, c, doped, res, history, emit) -> dict[str, Any]:
        row = _row(c, doped, res, self.E.shape, self.w, c["n_subspaces"], history)
        self.rows.append(row)
        self.states.append((c, res))
        if emit is not None:
            emit(row)
        return row

    def refit_winner(self, c: dict[str, Any], res: SplitResult, row: dict[str, Any]) -> SplitResult:
        """One warm full-effort refit without the exact rows; kept only if it is better."""
        t0 = time.perf_counter()
        full = make_fitter(self.E, self.w, c["method"], c["p"], c["n_subspaces"], REFIT, None)
        w_fit = self.w.copy()
        w_fit[res.exact] = 0.0
        state = full.fit(res.rank, w_fit, init=res.state)
        better = dope_rounds(full, self.w, self.total, res.rank, res.n_exact, state, 0)
        row["seconds"] += time.perf_counter() - t0
        if not better.error < res.error:
            return res
        row.update(error=better.error, refit=True, n_exact=better.n_exact,
                   lp_cost=_row(c, row["doped"], better, self.E.shape, self.w,
                                c["n_subspaces"], [])["lp_cost"])
        return better
