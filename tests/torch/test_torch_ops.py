"""lpfast.torch.doped_kp_matmul: the torch.library custom op and its C++ backward.

Layout:
  helpers                 random operands, dense W
  forward vs dense        dtype x rank x (S, bias) x leading batch dims, index dtypes
  gradcheck (float64)     every differentiable input, rank 1 and > 1, with/without S, bias
  backward vs dense       float32 and float64 gradients against autograd through dense W
  needs_input_grad        only the requested gradients are computed and returned
  opcheck, torch.compile  schema/fake/autograd registration; fullgraph compile of a module
  bad input               every rejection names its argument
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import lpfast.torch as lt
from lpfast.torch import doped_kp_matmul

from _torch_helpers import DTYPES, TOL

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


# -- helpers ---------------------------------------------------------------------------------

def operands(a_shape=(3, 2), b_shape=(2, 4), rank=1, dtype=torch.float64, *, with_S=True,
             with_bias=True, density=0.3, index_dtype=torch.int64, seed=0,
             requires_grad=False) -> dict:
    """Random A (rank, m1, n1), B (rank, m2, n2), S in CSR parts and bias, of one dtype."""
    g = torch.Generator().manual_seed(seed)
    (m1, n1), (m2, n2) = a_shape, b_shape
    m, n = m1 * m2, n1 * n2
    A = torch.randn(rank, m1, n1, generator=g, dtype=dtype)
    B = torch.randn(rank, m2, n2, generator=g, dtype=dtype)
    ops = {"A": A, "B": B, "S_values": None, "S_crow_indices": None, "S_col_indices": None,
           "bias": None}
    if with_S:
        mask = torch.rand(m, n, generator=g) < density
        mask[0, 0] = True  # at least one entry
        dense = torch.where(mask, torch.randn(m, n, generator=g, dtype=dtype),
                            torch.zeros((), dtype=dtype))
        S = dense.to_sparse_csr()
        ops.update(S_values=S.values().clone(),
                   S_crow_indices=S.crow_indices().to(index_dtype),
                   S_col_indices=S.col_indices().to(index_dtype))
    if with_bias:
        ops["bias"] = torch.randn(m, generator=g, dtype=dtype)
    if requires_grad:
        for k in ("A", "B", "S_values", "bias"):
            if ops[k] is not None:
                ops[k].requires_grad_(True)
    return ops


def dense_W(ops: dict) -> torch.Tensor:
    """W = sum_r kron(A[r], B[r]) + S, built with differentiable torch ops."""
    A, B = ops["A"], ops["B"]
    W = sum(torch.kron(A[r], B[r]) for r in range(A.shape[0]))
    if ops["S_values"] is not None:
        crow, col = ops["S_crow_indices"].long(), ops["S_col_indices"].long()
        rows = torch.repeat_interleave(torch.arange(W.shape[0]), crow.diff())
        S = torch.zeros_like(W).index_put((rows, col), ops["S_values"], accumulate=True)
        W = W + S
    return W


def dense_forward(x: torch.Tensor, ops: dict) -> torch.Tensor:
    return torch.nn.functional.linear(x, dense_W(ops), ops["bias"])


def call(x: torch.Tensor, ops: dict) -> torch.Tensor:
    return doped_kp_matmul(x, ops["A"], ops["B"], ops["S_values"], ops["S_crow_indices"],
                           ops["S_col_indices"], ops["bias"])


CONFIGS = [pytest.param(r, s, b, id=f"R{r}{'-S' if s else ''}{'-bias' if b else ''}")
           for r, s, b in itertools.product((1, 3), (False, True), (False, True))]


# -- forward vs dense ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rank", "with_S", "with_bias"), CONFIGS)
@pytest.mark.parametrize("lead", [(5,), (1,), (2, 3), ()])
def test_forward_matches_dense(dtype, rank, with_S, with_bias, lead):
    ops = operands(rank=rank, dtype=dtype, with_S=with_S, with_bias=with_bias)
    x = torch.randn(*lead, 8, dtype=dtype)
    y = call(x, ops)
    assert y.shape == (*lead, 6) and y.dtype == dtype
    torch.testing.assert_close(y, dense_forward(x, ops), **TOL[dtype])


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_index_dtypes_and_2d_factors(index_dtype):
    ops = operands(index_dtype=index_dtype)
    x = torch.randn(4, 8, dtype=torch.float64)
    want = dense_forward(x, ops)
    ops2 = dict(ops, A=ops["A"][0], B=ops["B"][0])  # (m1, n1), (m2, n2) for rank 1
    torch.testing.assert_close(call(x, ops2), want)


def test_non_contiguous_inputs():
    ops = operands(rank=2)
    x = torch.randn(8, 5, dtype=torch.float64).T  # (5, 8), not contiguous
    At = ops["A"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    torch.testing.assert_close(call(x, dict(ops, A=At)), dense_forward(x, ops))


def test_inputs_not_modified():
    ops = operands(rank=2)
    x = torch.randn(4, 8, dtype=torch.float64)
    before = {k: v.clone() for k, v in ops.items() if v is not None}
    x0 = x.clone()
    call(x, ops)
    assert torch.equal(x, x0)
    for k, v in before.items():
        assert torch.equal(ops[k], v), k


def test_empty_batch():
    ops = operands()
    x = torch.randn(0, 8, dtype=torch.float64, requires_grad=True)
    y = call(x, ops)
    assert y.shape == (0, 6)
    y.sum().backward()
    assert x.grad.shape == (0, 8)


# -- gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize(("rank", "with_S", "with_bias"), CONFIGS)
def test_gradcheck_every_input(rank, with_S, with_bias):
    ops = operands(rank=rank, with_S=with_S, with_bias=with_bias, requires_grad=True)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    names = ["A", "B", "S_values", "bias"]
    given = [ops[k] for k in names if ops[k] is not None]

    def f(x, *params):
        it = iter(params)
        kw = {k: (next(it) if ops[k] is not None else None) for k in names}
        return doped_kp_matmul(x, kw["A"], kw["B"], kw["S_values"], ops["S_crow_indices"],
                               ops["S_col_indices"], kw["bias"])

    assert torch.autograd.gradcheck(f, (x, *given))


def test_gradcheck_2d_factors():
    ops = operands(rank=1, requires_grad=False)
    A = ops["A"][0].clone().requires_grad_(True)
    B = ops["B"][0].clone().requires_grad_(True)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def f(x, A, B):
        return doped_kp_matmul(x, A, B, ops["S_values"], ops["S_crow_indices"],
                               ops["S_col_indices"], ops["bias"])

    assert torch.autograd.gradcheck(f, (x, A, B))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [1, 2])
def test_backward_matches_dense(dtype, rank):
    ops = operands(a_shape=(4, 3), b_shape=(5, 2), rank=rank, dtype=dtype, requires_grad=True)
    dops = {k: (v.detach().clone().requires_grad_(v.requires_grad) if v is not None else None)
            for k, v in ops.items()}
    x = torch.randn(7, 6, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    dy = torch.randn(7, 20, dtype=dtype)
    call(x, ops).backward(dy)
    dense_forward(x2, dops).backward(dy)
    torch.testing.assert_close(x.grad, x2.grad, **TOL[dtype])
    for k in ("A", "B", "S_values", "bias"):
        assert ops[k].grad.dtype == dtype
        torch.testing.assert_close(ops[k].grad, dops[k].grad, **TOL[dtype])


def test_duplicate_entries_in_S():
    """Duplicates add up in the forward; each stored value gets the same gradient."""
    A = torch.randn(1, 2, 2, dtype=torch.float64)
    B = torch.randn(1, 2, 2, dtype=torch.float64)
    crow = torch.tensor([0, 2, 2, 2, 3])
    col = torch.tensor([1, 1, 3])
    vals = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ops = {"A": A, "B": B, "S_values": vals, "S_crow_indices": crow, "S_col_indices": col,
           "bias": None}
    torch.testing.assert_close(call(x, ops), dense_forward(x, ops))
    assert torch.autograd.gradcheck(
        lambda x, v: doped_kp_matmul(x, A, B, v, crow, col), (x, vals))


@pytest.mark.parametrize("wanted", ["x", "A", "B", "S_values", "bias", "A+B", "none-x"])
def test_needs_input_grad_respected(wanted, monkeypatch):
    ops = operands(rank=2)
    x = torch.randn(3, 8, dtype=torch.float64)
    grads = {"x": x, **{k: ops[k] for k in ("A", "B", "S_values", "bias")}}
    on = set(wanted.split("+")) if wanted != "none-x" else {"A", "B", "S_values", "bias"}
    for k in on:
        grads[k].requires_grad_(True)
    seen = {}
    real = torch.ops.lpfast.doped_kp_matmul_backward

    class Spy:
        def __call__(self, *args):
            seen["flags"] = args[-3:]
            return real(*args)

    import lpfast.torch.ops as ops_mod

    monkeypatch.setattr(ops_mod, "_call_backward", Spy())
    call(x, ops).sum().backward()
    for k, t in grads.items():
        assert (t.grad is not None) == (k in on), k
    need_x, need_factors, need_values = seen.get("flags", (False, False, False))
    assert need_x == ("x" in on)
    assert need_factors == bool({"A", "B"} & on)
    assert need_values == ("S_values" in on)


def test_no_grad_needed_runs_no_backward_kernel(monkeypatch):
    import lpfast.torch.ops as ops_mod

    called = []
    monkeypatch.setattr(ops_mod, "_call_backward", lambda *a: called.append(a))
    ops = operands()
    ops["bias"].requires_grad_(True)
    call(torch.randn(2, 8, dtype=torch.float64), ops).sum().backward()
    assert ops["bias"].grad is not None and not called


# -- registration: opcheck, torch.compile -----------------------------------------------------

@pytest.mark.parametrize(("rank", "with_S", "with_bias"), [(1, True, True), (2, False, False),
                                                            (2, True, False)])
def test_opcheck(rank, with_S, with_bias):
    ops = operands(rank=rank, with_S=with_S, with_bias=with_bias, requires_grad=True)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    args = (x, ops["A"], ops["B"], ops["S_crow_indices"], ops["S_col_indices"],
            ops["S_values"], ops["bias"])
    torch.library.opcheck(torch.ops.lpfast.doped_kp_matmul.default, args)


def test_opcheck_backward_op():
    ops = operands(rank=2)
    x = torch.randn(3, 8, dtype=torch.float64)
    dy = torch.randn(3, 6, dtype=torch.float64)
    for flags in [(True, True, True), (False, True, False), (True, False, True)]:
        torch.library.opcheck(torch.ops.lpfast.doped_kp_matmul_backward.default,
                              (dy, x, ops["A"], ops["B"], ops["S_crow_indices"],
                               ops["S_col_indices"], ops["S_values"], *flags))


class _Doped(torch.nn.Module):
    def __init__(self, ops: dict):
        super().__init__()
        self.A = torch.nn.Parameter(ops["A"].detach().clone())
        self.B = torch.nn.Parameter(ops["B"].detach().clone())
        self.values = torch.nn.Parameter(ops["S_values"].detach().clone())
        self.bias = torch.nn.Parameter(ops["bias"].detach().clone())
        self.register_buffer("crow", ops["S_crow_indices"])
        self.register_buffer("col", ops["S_col_indices"])

    def forward(self, x):
        y = doped_kp_matmul(x, self.A, self.B, self.values, self.crow, self.col, self.bias,
                            check=False)
        return torch.relu(y).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", [
    "aot_eager",
    # Inductor compiles C++ (about 40 s here): opt in with LPFAST_TEST_INDUCTOR=1.
    pytest.param("inductor", marks=pytest.mark.skipif(
        os.environ.get("LPFAST_TEST_INDUCTOR", "") in ("", "0"),
        reason="slow: set LPFAST_TEST_INDUCTOR=1")),
])
def test_torch_compile_fullgraph(dtype, backend):
    """Dynamo traces the op without graph breaks; AOT autograd traces its backward op."""
    torch._dynamo.reset()
    ops = operands(rank=2, dtype=dtype)
    eager = _Doped(ops)
    compiled_mod = _Doped(ops)
    compiled = torch.compile(compiled_mod, fullgraph=True, backend=backend)
    x = torch.randn(4, 8, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = eager(x), compiled(x2)
    torch.testing.assert_close(y2, y, **TOL[dtype])
    y.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, **TOL[dtype])
    for (name, p), (_, p2) in zip(eager.named_parameters(), compiled_mod.named_parameters()):
        torch.testing.assert_close(p2.grad, p.grad, **TOL[dtype], msg=name)


def test_torch_compile_with_default_checks():
    """check=True (the default) must not break the graph: only the data-dependent CSR
    validation is skipped while tracing."""
    torch._dynamo.reset()
    ops = operands(rank=2)
    compiled = torch.compile(lambda x: call(x, ops), fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(compiled(x), dense_forward(x, ops))


# -- bad input -------------------------------------------------------------------------------

def test_bad_input_names_argument():
    ops = operands()
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="x"):
        call(torch.randn(2, 7, dtype=torch.float64), ops)
    with pytest.raises(TypeError, match="x"):
        doped_kp_matmul(x.numpy(), ops["A"], ops["B"])
    with pytest.raises(TypeError, match="A"):
        call(x, dict(ops, A=ops["A"].float()))
    with pytest.raises(TypeError, match="x"):
        call(x.long(), ops)
    with pytest.raises(ValueError, match="bias"):
        call(x, dict(ops, bias=ops["bias"][:-1]))
    # Shapes are checked by lpfast._validate.doped_matmul_shapes, as for the NumPy API.
    with pytest.raises(ValueError, match="A and B: Kronecker ranks differ"):
        call(x, dict(ops, B=torch.randn(2, 2, 4, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"A, B: expected \(R, m1, n1\)"):
        call(x, dict(ops, A=ops["A"].unsqueeze(0)))
    with pytest.raises(ValueError, match="S_values"):
        call(x, dict(ops, S_col_indices=None))
    with pytest.raises(TypeError, match="S_crow_indices"):
        call(x, dict(ops, S_crow_indices=ops["S_crow_indices"].int()))
    bad_col = ops["S_col_indices"].clone()
    bad_col[0] = 99
    with pytest.raises(ValueError, match="S"):
        call(x, dict(ops, S_col_indices=bad_col))
    with pytest.raises(ValueError, match="S"):
        call(x, dict(ops, S_values=ops["S_values"][:-1]))


def test_exports_and_import_error_message():
    assert lt.doped_kp_matmul is doped_kp_matmul
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import lpfast\n"
            "try:\n    import lpfast.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install torch" in out
