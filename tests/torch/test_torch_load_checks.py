"""Index buffers loaded from a state_dict are checked once, at load time (issue 18, item 2).

The layers' forwards hand their index buffers to C++ kernels (DopedKroneckerLinear,
ProjectiveEmbedding) or to torch's sparse CSR product (LowRankSparseLinear) without
checks; a bad state_dict must raise a ValueError/TypeError naming the key before any
kernel can read out of bounds, and leave the layer as it was.

Layout:
  sparse layers     DopedKroneckerLinear, LowRankSparseLinear: columns out of range, negative,
                    past the width, non-monotone crow, mixed/float index dtypes, lengths
  projective        labels out of range, float, wrong length
"""

from __future__ import annotations

import pytest
import torch

from lpfast.torch import DopedKroneckerLinear, LowRankSparseLinear, ProjectiveEmbedding


def sparse_layers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"doped": DopedKroneckerLinear(16, 16, (4, 4), (4, 4), 0.2),
            "lowrank_sparse": LowRankSparseLinear(16, 16, 2, 0.2)}


def with_col(sd, pos, value):
    col = sd["S_col_indices"].clone()
    col[pos] = value
    return dict(sd, S_col_indices=col)


def crow_swapped(sd):
    crow = sd["S_crow_indices"].clone()
    crow[3], crow[4] = crow[4].item() + 1, crow[3].item()  # non-monotone, same ends
    return dict(sd, S_crow_indices=crow)


COLUMNS = r"'S_col_indices'.*\[0, 16\)"
BAD = {  # name -> (state_dict -> bad state_dict, exception, pattern naming the key)
    "column 10**6": (lambda sd: with_col(sd, 0, 10**6), ValueError, COLUMNS),
    "column -10**7": (lambda sd: with_col(sd, 1, -10**7), ValueError, COLUMNS),
    "column 25 of 16": (lambda sd: with_col(sd, -1, 25), ValueError, COLUMNS),
    "non-monotone crow": (crow_swapped, ValueError, r"'S_crow_indices'.*non-decreasing"),
    "crow from 1": (lambda sd: dict(sd, S_crow_indices=sd["S_crow_indices"] + 1), ValueError,
                    r"'S_crow_indices'"),
    "short crow": (lambda sd: dict(sd, S_crow_indices=sd["S_crow_indices"][:-1]), ValueError,
                   r"'S_crow_indices'.*\(17,\)"),
    "col longer than values": (lambda sd: dict(sd, S_col_indices=torch.cat(
        [sd["S_col_indices"], sd["S_col_indices"][:1]])), ValueError, r"'S_col_indices'.*shape"),
    "mixed int32/int64": (lambda sd: dict(sd, S_col_indices=sd["S_col_indices"].long()), TypeError,
                          r"'S_crow_indices'.*'S_col_indices'.*one index dtype"),
    "float crow": (lambda sd: dict(sd, S_crow_indices=sd["S_crow_indices"].double()), TypeError,
                   r"'S_crow_indices'.*integer"),
    "float col": (lambda sd: dict(sd, S_col_indices=sd["S_col_indices"].float()), TypeError,
                  r"'S_col_indices'.*integer"),
    "int16 col": (lambda sd: dict(sd, S_col_indices=sd["S_col_indices"].short()), TypeError,
                  r"'S_col_indices'.*int32 or int64"),
    "not a tensor": (lambda sd: dict(sd, S_col_indices=sd["S_col_indices"].tolist()), TypeError,
                     r"'S_col_indices'.*tensor"),
    "integer values": (lambda sd: dict(sd, S_values=sd["S_values"].long()), TypeError,
                       r"'S_values'.*floating"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("kind", ["doped", "lowrank_sparse"])
def test_sparse_layer_refuses_bad_indices_at_load(kind, case):
    layer = sparse_layers()[kind]
    x = torch.randn(3, 16)
    before = layer(x).detach()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    change, exc, pattern = BAD[case]
    with pytest.raises(exc, match=pattern):
        layer.load_state_dict(change(state))
    for k, v in layer.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, state[k]), k
    assert torch.equal(layer(x).detach(), before)


@pytest.mark.parametrize("kind", ["doped", "lowrank_sparse"])
def test_prefixed_key_is_named(kind):
    model = torch.nn.Sequential(sparse_layers()[kind])
    sd = model.state_dict()
    col = sd["0.S_col_indices"].clone()
    col[0] = 10**6
    with pytest.raises(ValueError, match=r"state_dict\['0.S_col_indices'\]"):
        model.load_state_dict(dict(sd, **{"0.S_col_indices": col}))


def test_lowrank_sparse_requires_sorted_columns():
    layer = sparse_layers()["lowrank_sparse"]
    sd = layer.state_dict()
    crow, col = sd["S_crow_indices"], sd["S_col_indices"].clone()
    r = int(torch.nonzero(crow.diff() >= 2)[0])  # a row with two entries
    a, b = int(crow[r]), int(crow[r]) + 1
    col[a], col[b] = col[b].item(), col[a].item()
    with pytest.raises(ValueError, match=r"'S_col_indices'.*strictly increasing"):
        layer.load_state_dict(dict(sd, S_col_indices=col))


def test_doped_mask_of_the_wrong_length():
    layer = sparse_layers()["doped"]
    layer.prune_(0.1)
    sd = layer.state_dict()
    with pytest.raises(ValueError, match=r"'S_mask'"):
        layer.load_state_dict(dict(sd, S_mask=sd["S_mask"][:-1]))


def test_valid_states_of_other_sizes_still_load():
    """The checks adopt what the layers always accepted: another nnz, int64 indices."""
    torch.manual_seed(3)
    for kind, make in (("doped", lambda d: DopedKroneckerLinear(16, 16, (4, 4), (4, 4), d)),
                       ("lowrank_sparse", lambda d: LowRankSparseLinear(16, 16, 2, d))):
        src, dst = make(0.5), make(0.1)
        sd = {k: (v.long() if "indices" in k else v) for k, v in src.state_dict().items()}
        dst.load_state_dict(sd)
        x = torch.randn(2, 16)
        torch.testing.assert_close(dst(x), src(x), msg=kind)


# -- projective ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, exc, pattern", [
    (lambda lab: lab + 3, ValueError, r"'labels'.*\[0, 3\)"),
    (lambda lab: lab - 1, ValueError, r"'labels'.*\[0, 3\)"),
    (lambda lab: lab.double(), TypeError, r"'labels'.*integer"),
    (lambda lab: lab[:-1], ValueError, r"'labels'.*\(20,\)"),
])
def test_projective_refuses_bad_labels_at_load(change, exc, pattern):
    torch.manual_seed(0)
    layer = ProjectiveEmbedding(20, 8, 3, 2)
    sd = layer.state_dict()
    labels = sd["labels"].clone()
    labels[0] = 2  # so that + 3 leaves the range, - 1 too (from 0)
    labels[1] = 0
    with pytest.raises(exc, match=pattern):
        layer.load_state_dict(dict(sd, labels=change(labels)))
    assert torch.equal(layer.labels, sd["labels"])
