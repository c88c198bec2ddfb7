"""Benchmarks of lpfast's torch layers against the dense torch layers they replace.

One pytest-benchmark group per case, single thread (``torch.set_num_threads(1)``,
``lpfast.set_num_threads(1)`` and threadpoolctl when installed), float32:

* ``forward``   ``DopedKroneckerLinear`` (4096x4096 = kron(64x64, 64x64) + 1% doping, bias)
                vs ``nn.Linear(4096, 4096)``, batch 1 and 32, under ``torch.no_grad()``;
* ``backward``  the backward pass alone (graph kept with ``retain_graph``; x, the factors,
                S's values and the bias all need gradients) vs ``nn.Linear``'s, batch 1, 32;
* ``lookup``    ``LowRankEmbedding(30522, 768, rank 64)`` and ``ProjectiveEmbedding(30522,
                768, 4 subspaces of dim 64)`` vs ``nn.Embedding(30522, 64)`` +
                ``nn.Linear(64, 768, bias=False)`` (the same rank), 1 x 128 and 32 x 128
                token ids.

Layers are built with random values (timings do not depend on fitted values); every
benchmark checks its result against a float64 dense computation, so ``--benchmark-disable``
turns this file into a correctness test.

Environment: ``LPFAST_BENCH_MAX_TIME`` (seconds per benchmark, default 0.3) and
``LPFAST_BENCH_MIN_ROUNDS`` (default 10), as in bench_kron.py.

Run: ``python -m pytest bench/bench_torch.py --benchmark-only
--benchmark-columns=min,median,iqr,rounds``.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

import lpfast

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from lpfast.torch import (  # noqa: E402
    DopedKroneckerLinear,
    LowRankEmbedding,
    ProjectiveEmbedding,
)

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional
    threadpool_limits = None

SEED = 20240601
MAX_TIME = float(os.environ.get("LPFAST_BENCH_MAX_TIME", "0.3"))
MIN_ROUNDS = int(os.environ.get("LPFAST_BENCH_MIN_ROUNDS", "10"))
TIMING = {"min_rounds": MIN_ROUNDS, "max_time": MAX_TIME, "warmup": True,
          "warmup_iterations": 5, "disable_gc": True}

FEATURES, A_SHAPE, B_SHAPE, DENSITY = 4096, (64, 64), (64, 64), 0.01
VOCAB, DIM, RANK, N_SUBSPACES = 30522, 768, 64, 4
CHECK_VOCAB = 2000  # the tables' rows when benchmarks are disabled (a test run)
#: Allowed error relative to max |result| of the float64 computation (float32 layers).
TOL = 1e-4

#: Competitors in the order they run within a group (conftest.py sorts by this).
COMPETITORS = ("test_doped_forward", "test_dense_forward", "test_doped_backward",
               "test_dense_backward", "test_lowrank_lookup", "test_projective_lookup",
               "test_dense_lookup")


@dataclass(frozen=True)
class Case:
    kind: str       # forward | backward | lookup
    batch: int      # rows of x (forward/backward) or sequences of 128 tokens (lookup)
    order: int = 0

    @property
    def id(self) -> str:
        return f"{self.kind}-b{self.batch}-f32-t1"


CASES = [Case(k, b, order=i) for i, (k, b) in enumerate(
    [("forward", 1), ("forward", 32), ("backward", 1), ("backward", 32), ("lookup", 1),
     ("lookup", 32)])]


def params(kind: str) -> list:
    return [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=c.id, **TIMING))
            for c in CASES if c.kind == kind]


@contextmanager
def one_thread():
    with ExitStack() as stack:
        if threadpool_limits is not None:
            stack.enter_context(threadpool_limits(limits=1))
        lpfast.set_num_threads(1)
        stack.callback(lpfast.set_num_threads, None)
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)
        yield


def run(benchmark, case: Case, label: str, fn, *args):
    benchmark.extra_info.update(competitor=label, case=case.id, kind=case.kind,
                                batch=case.batch, threads=1, dtype="float32")
    with one_thread():
        out = benchmark(fn, *args)
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    return out


def close(got: torch.Tensor, want: np.ndarray) -> None:
    got = got.detach().numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * float(np.abs(want).max()))


# -- linear layers ----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def linear_layers() -> tuple[DopedKroneckerLinear, nn.Linear, np.ndarray]:
    """The doped layer (random factors, 1% random doping), the nn.Linear holding its dense
    weight, and that weight in float64."""
    torch.manual_seed(SEED)
    doped = DopedKroneckerLinear(FEATURES, FEATURES, A_SHAPE, B_SHAPE, DENSITY)
    with torch.no_grad():
        doped.S_values.normal_(0, 0.05)
    W = doped.dense_weight()
    dense = nn.Linear(FEATURES, FEATURES)
    with torch.no_grad():
        dense.weight.copy_(W)
        dense.bias.copy_(doped.bias)
    return doped, dense, W.double().numpy()


@lru_cache(maxsize=2)
def linear_io(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + batch)
    return (torch.randn(batch, FEATURES, generator=g), torch.randn(batch, FEATURES, generator=g))


def forward_expected(batch: int) -> np.ndarray:
    doped, _, W = linear_layers()
    x = linear_io(batch)[0].double().numpy()
    return x @ W.T + doped.bias.detach().double().numpy()


def no_grad_call(layer, x):
    layer.eval()  # how a server runs a layer (the doped layer then serves from its cache)
    with torch.no_grad():
        return layer(x)


@pytest.mark.parametrize("case", params("forward"))
def test_doped_forward(benchmark, case):
    doped, _, _ = linear_layers()
    x = linear_io(case.batch)[0]
    close(run(benchmark, case, "DopedKroneckerLinear", no_grad_call, doped, x),
          forward_expected(case.batch))


@pytest.mark.parametrize("case", params("forward"))
def test_dense_forward(benchmark, case):
    _, dense, _ = linear_layers()
    x = linear_io(case.batch)[0]
    close(run(benchmark, case, "nn.Linear", no_grad_call, dense, x), forward_expected(case.batch))


def backward_step(y: torch.Tensor, dy: torch.Tensor, leaves: list[torch.Tensor]):
    for t in leaves:
        t.grad = None
    y.backward(dy, retain_graph=True)
    return [t.grad for t in leaves]


def check_backward(grads: dict[str, torch.Tensor], batch: int) -> None:
    """dx = dy @ W and dbias = sum(dy) for both layers (float64 ground truth)."""
    _, _, W = linear_layers()
    dy = linear_io(batch)[1].double().numpy()
    close(grads["x"], dy @ W)
    close(grads["bias"], dy.sum(0))


@pytest.mark.parametrize("case", params("backward"))
def test_doped_backward(benchmark, case):
    doped, _, _ = linear_layers()
    x, dy = linear_io(case.batch)
    x = x.clone().requires_grad_(True)
    y = doped(x)
    leaves = [x, doped.A, doped.B, doped.S_values, doped.bias]
    grads = run(benchmark, case, "DopedKroneckerLinear", backward_step, y, dy, leaves)
    check_backward(dict(x=grads[0], bias=grads[4]), case.batch)
    # dA and dB against the chain rule through the dense weight: dW = dy.T @ x.
    A, B = doped.A.detach().double()[0], doped.B.detach().double()[0]
    dW = (dy.double().T @ x.detach().double()).reshape(64, 64, 64, 64)  # [i1, i2, j1, j2]
    close(grads[1][0], torch.einsum("abcd,bd->ac", dW, B).numpy())
    close(grads[2][0], torch.einsum("abcd,ac->bd", dW, A).numpy())
    for t in leaves:
        t.grad = None


@pytest.mark.parametrize("case", params("backward"))
def test_dense_backward(benchmark, case):
    _, dense, _ = linear_layers()
    x, dy = linear_io(case.batch)
    x = x.clone().requires_grad_(True)
    y = dense(x)
    leaves = [x, dense.weight, dense.bias]
    grads = run(benchmark, case, "nn.Linear", backward_step, y, dy, leaves)
    check_backward(dict(x=grads[0], bias=grads[2]), case.batch)
    close(grads[1], (dy.double().T @ x.detach().double()).numpy())
    for t in leaves:
        t.grad = None


# -- embedding lookups ------------------------------------------------------------------------

def vocab(benchmark) -> int:
    """The tables' rows: the benchmark's, or a small vocabulary when benchmarks are disabled
    (the float64 recomputation of a 30522-row table dominated the test run)."""
    return VOCAB if benchmark.enabled else CHECK_VOCAB


@lru_cache(maxsize=1)
def embedding_layers(n: int = VOCAB):
    torch.manual_seed(SEED)
    lowrank = LowRankEmbedding(n, DIM, RANK)
    projective = ProjectiveEmbedding(n, DIM, N_SUBSPACES, RANK)
    emb, lin = nn.Embedding(n, RANK), nn.Linear(RANK, DIM, bias=False)
    with torch.no_grad():  # the same table as the low-rank layer
        emb.weight.copy_(lowrank.weight)
        lin.weight.copy_(lowrank.proj.T)
    dense = nn.Sequential(emb, lin)
    return lowrank, projective, dense


@lru_cache(maxsize=2)
def token_ids(batch: int, n: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + 7 + batch)
    return torch.randint(0, n, (batch, 128), generator=g)


def lookup_expected(layer, batch: int) -> np.ndarray:
    ids = token_ids(batch, layer.num_embeddings)
    return layer.dense_weight().double().numpy()[ids.numpy()]


@pytest.mark.parametrize("case", params("lookup"))
def test_lowrank_lookup(benchmark, case):
    lowrank, _, _ = embedding_layers(vocab(benchmark))
    out = run(benchmark, case, "LowRankEmbedding", no_grad_call, lowrank,
              token_ids(case.batch, lowrank.num_embeddings))
    close(out, lookup_expected(lowrank, case.batch))


@pytest.mark.parametrize("case", params("lookup"))
def test_projective_lookup(benchmark, case):
    _, projective, _ = embedding_layers(vocab(benchmark))
    out = run(benchmark, case, "ProjectiveEmbedding", no_grad_call, projective,
              token_ids(case.batch, projective.num_embeddings))
    close(out, lookup_expected(projective, case.batch))


@pytest.mark.parametrize("case", params("lookup"))
def test_dense_lookup(benchmark, case):
    lowrank, _, dense = embedding_layers(vocab(benchmark))
    out = run(benchmark, case, "nn.Embedding+nn.Linear", no_grad_call, dense,
              token_ids(case.batch, lowrank.num_embeddings))
    close(out, lookup_expected(lowrank, case.batch))
