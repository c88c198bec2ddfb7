"""lpfast.torch.ops.projective_lookup: the fused projective-embedding lookup and its backward.

Layout:
  forward         against the dense table and the previous pure-torch (sort by subspace,
                  one product per subspace) forward; any ids shape, int32 ids, empty ids
  gradients       gradcheck (float64), against autograd through plain torch ops, duplicate
                  ids, padding_idx, needs_input_grad, bitwise the same for 1 and 2 threads
  registration    opcheck of both ops, torch.compile(fullgraph=True)
  bad input       out-of-range ids (IndexError naming the id), labels, dtypes, shapes
  concurrency     two Python threads calling the op agree with serial calls
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import lpfast
from lpfast.torch import ProjectiveEmbedding
from lpfast.torch.ops import projective_lookup

from _torch_helpers import DTYPES
from _torch_helpers import TIGHT as TOL


def table(n=50, j=5, k=3, d=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(n, j, generator=g, dtype=dtype)
    bases = torch.randn(k, j, d, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    return coef, bases, labels


def dense(coef, bases, labels, ids):
    """The table through plain torch ops (differentiable)."""
    W = torch.bmm(coef.unsqueeze(1), bases[labels]).squeeze(1)
    return W[ids]


def previous_forward(layer, x):
    """ProjectiveEmbedding.forward before the fused op (commit 01ae190), kept as a reference."""
    flat = x.reshape(-1)
    k = layer.n_subspaces
    if k == 1:
        out = F.embedding(flat, layer.coef, layer.padding_idx) @ layer.bases[0]
    else:
        labels = layer.labels[flat]
        order = torch.argsort(labels)
        counts = torch.bincount(labels, minlength=k).tolist()
        coef = F.embedding(flat[order], layer.coef, layer.padding_idx)
        parts = [c @ layer.bases[i] for i, c in enumerate(torch.split(coef, counts))]
        sorted_out = torch.cat(parts)
        out = torch.empty_like(sorted_out).index_copy(0, order, sorted_out)
    return out.reshape(*x.shape, layer.embedding_dim)


# -- forward ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 11), (2, 3, 5)])
@pytest.mark.parametrize("j, d", [(5, 37), (4, 64), (64, 768), (1, 1), (9, 16)])
def test_forward_matches_dense(dtype, shape, j, d):
    coef, bases, labels = table(n=40, j=j, d=d, dtype=dtype)
    ids = torch.randint(0, 40, shape)
    out = projective_lookup(ids, coef, bases, labels)
    assert out.shape == (*shape, d) and out.dtype == dtype
    torch.testing.assert_close(out, dense(coef, bases, labels, ids), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_layer_matches_previous_forward(dtype, k, padding_idx):
    torch.manual_seed(0)
    layer = ProjectiveEmbedding(300, 48, k, 8, padding_idx=padding_idx, dtype=dtype)
    x = torch.randint(0, 300, (4, 33))
    x[0, :3] = 3
    torch.testing.assert_close(layer(x), previous_forward(layer, x), **TOL[dtype])
    with torch.no_grad():
        torch.testing.assert_close(layer(x), previous_forward(layer, x), **TOL[dtype])


def test_layer_gradients_match_previous_forward_with_padding():
    torch.manual_seed(1)
    layer = ProjectiveEmbedding(60, 16, 3, 4, padding_idx=2, dtype=torch.float64)
    x = torch.tensor([[2, 5, 5, 7], [2, 59, 0, 5]])
    dy = torch.randn(2, 4, 16, dtype=torch.float64)
    (layer(x) * dy).sum().backward()
    got = {k: p.grad.clone() for k, p in layer.named_parameters()}
    layer.zero_grad()
    (previous_forward(layer, x) * dy).sum().backward()
    for k, p in layer.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-12, atol=1e-12, msg=k)
    assert torch.all(got["coef"][2] == 0)
    assert got["bases"].abs().sum() > 0


def test_int32_ids_and_non_contiguous_inputs():
    coef, bases, labels = table()
    ids = torch.randint(0, 50, (6, 4))
    want = dense(coef, bases, labels, ids)
    torch.testing.assert_close(projective_lookup(ids.int(), coef, bases, labels), want)
    coef_nc = coef.t().contiguous().t()  # Fortran order
    bases_nc = bases.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(projective_lookup(ids.t(), coef_nc, bases_nc, labels),
                               dense(coef, bases, labels, ids.t()))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5)])
def test_empty_ids(shape):
    coef, bases, labels = table()
    coef.requires_grad_(True)
    bases.requires_grad_(True)
    ids = torch.zeros(shape, dtype=torch.int64)
    out = projective_lookup(ids, coef, bases, labels)
    assert out.shape == (*shape, 37)
    out.sum().backward()
    assert torch.all(coef.grad == 0) and torch.all(bases.grad == 0)


def test_inputs_not_modified():
    coef, bases, labels = table()
    ids = torch.randint(0, 50, (20,))
    copies = [t.clone() for t in (coef, bases, labels, ids)]
    c, b = coef.clone().requires_grad_(True), bases.clone().requires_grad_(True)
    projective_lookup(ids, c, b, labels).sum().backward()
    projective_lookup(ids, coef, bases, labels)
    for t, t0 in zip((coef, bases, labels, ids), copies):
        assert torch.equal(t, t0)


# -- gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 4])
@pytest.mark.parametrize("d", [7, 20])
def test_gradcheck(padding_idx, d):
    coef, bases, labels = table(n=12, j=3, k=3, d=d)
    bases.requires_grad_(True)
    ids = torch.tensor([[4, 1, 1, 11], [0, 4, 7, 1]])  # duplicates, the padding row
    if padding_idx is None:
        coef.requires_grad_(True)
        torch.autograd.gradcheck(lambda c, b: projective_lookup(ids, c, b, labels), (coef, bases))
    else:  # the padding row's coef gradient is zeroed on purpose: check the bases only
        torch.autograd.gradcheck(lambda b: projective_lookup(ids, coef, b, labels, padding_idx),
                                 (bases,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicate_ids_accumulate(dtype):
    coef, bases, labels = table(n=30, j=6, k=4, d=70, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    ids = torch.cat([torch.full((40,), 7), torch.randint(0, 30, (60,), generator=g),
                     torch.full((9,), 29)])
    dy = torch.randn(ids.shape[0], 70, dtype=dtype, generator=g)
    c1, b1 = coef.clone().requires_grad_(True), bases.clone().requires_grad_(True)
    (projective_lookup(ids, c1, b1, labels) * dy).sum().backward()
    c2, b2 = coef.clone().requires_grad_(True), bases.clone().requires_grad_(True)
    (dense(c2, b2, labels, ids) * dy).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c1.grad, c2.grad, **tol)
    torch.testing.assert_close(b1.grad, b2.grad, **tol)


@pytest.mark.parametrize("wanted", ["coef", "bases"])
def test_needs_input_grad(wanted):
    coef, bases, labels = table()
    coef.requires_grad_(wanted == "coef")
    bases.requires_grad_(wanted == "bases")
    ids = torch.randint(0, 50, (13,))
    projective_lookup(ids, coef, bases, labels).sum().backward()
    assert (coef.grad is not None) == (wanted == "coef")
    assert (bases.grad is not None) == (wanted == "bases")


def test_deterministic_across_thread_counts():
    coef, bases, labels = table(n=500, j=64, k=4, d=256, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (4000,), generator=g)  # many duplicates
    dy = torch.randn(4000, 256, generator=g)
    results = []
    for threads in (1, 2, 1):
        lpfast.set_num_threads(threads)
        try:
            c, b = coef.clone().requires_grad_(True), bases.clone().requires_grad_(True)
            out = projective_lookup(ids, c, b, labels)
            (out * dy).sum().backward()
            results.append((out.detach(), c.grad, b.grad))
        finally:
            lpfast.set_num_threads(None)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# -- registration ----------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [-1, 2])
def test_opcheck(padding_idx):
    coef, bases, labels = table(n=10, j=3, k=2, d=9)
    coef.requires_grad_(True)
    bases.requires_grad_(True)
    ids = torch.tensor([[2, 3, 3], [9, 0, 2]])
    torch.library.opcheck(torch.ops.lpfast.projective_lookup.default,
                          (ids, coef, bases, labels, padding_idx))


def test_opcheck_backward_op():
    coef, bases, labels = table(n=10, j=3, k=2, d=9)
    ids = torch.tensor([2, 3, 3, 9])
    grad = torch.randn(4, 9, dtype=torch.float64)
    for need in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(torch.ops.lpfast.projective_lookup_backward.default,
                              (grad, ids, coef, bases, labels, -1, *need))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    layer = ProjectiveEmbedding(40, 16, 3, 4, padding_idx=1, dtype=torch.float64)
    x = torch.randint(0, 40, (3, 5))
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x))
    compiled(x).sum().backward()
    assert layer.coef.grad is not None and layer.bases.grad is not None


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [50, 10**12, -1, -51])
def test_out_of_range_ids(bad):
    coef, bases, labels = table()
    ids = torch.tensor([[0, 1], [bad, 2]])
    with pytest.raises(IndexError, match=f"ids: index {bad} at position 2 is out of range"):
        projective_lookup(ids, coef, bases, labels)
    layer = ProjectiveEmbedding(50, 16, 3, 4)
    with pytest.raises(IndexError, match="out of range for 50 embeddings"):
        layer(ids)
    with torch.no_grad(), pytest.raises(IndexError, match="out of range for 50 embeddings"):
        layer(ids)  # the eager inference path, which skips the dispatcher


def test_bad_labels_rejected():
    coef, bases, labels = table()
    labels = labels.clone()
    labels[4] = 3  # k == 3
    with pytest.raises(ValueError, match="labels: row 4 has label 3"):
        projective_lookup(torch.tensor([4]), coef, bases, labels)


def test_bad_arguments_name_themselves():
    coef, bases, labels = table()
    ids = torch.tensor([1, 2])
    with pytest.raises(TypeError, match="ids"):
        projective_lookup(ids.double(), coef, bases, labels)
    with pytest.raises(TypeError, match="coef, bases"):
        projective_lookup(ids, coef.float(), bases, labels)
    with pytest.raises(TypeError, match="labels"):
        projective_lookup(ids, coef, bases, labels.int())
    with pytest.raises(ValueError, match="coef, bases"):
        projective_lookup(ids, coef, bases[:, :2], labels)
    with pytest.raises(ValueError, match="labels"):
        projective_lookup(ids, coef, bases, labels[:-1])
    with pytest.raises(ValueError, match="padding_idx"):
        projective_lookup(ids, coef, bases, labels, padding_idx=50)
    with pytest.raises(TypeError, match="coef"):
        projective_lookup(ids, coef.numpy(), bases, labels)


# -- concurrency -----------------------------------------------------------------------------

def test_two_python_threads_agree_with_serial():
    coef, bases, labels = table(n=2000, j=32, k=4, d=128, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    batches = [torch.randint(0, 2000, (64, 32), generator=g) for _ in range(8)]
    dys = [torch.randn(64, 32, 128, generator=g) for _ in range(8)]

    def run(i):
        c, b = coef.clone().requires_grad_(True), bases.clone().requires_grad_(True)
        out = projective_lookup(batches[i], c, b, labels)
        (out * dys[i]).sum().backward()
        return out.detach(), c.grad, b.grad

    serial = [run(i) for i in range(8)]
    got = [None] * 8
    errors = []

    def worker(indices):
        try:
            for _ in range(3):
                for i in indices:
                    got[i] = run(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(t, 8, 2),)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for want, have in zip(serial, got):
        for a, b in zip(want, have):
            assert torch.equal(a, b)
