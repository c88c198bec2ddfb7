"""save_compressed / load_compressed: compressed models on disk without pickled code.

Layout:
  round trip     every lpfast layer (fitted sizes, a pruning mask, a pruned Linear) and a
                 compress() result: same classes, same state, same outputs
  safety         the file loads with weights_only=True and holds no pickled globals;
                 pickles, garbage and mismatched models are refused with the file named
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import lpfast.torch as lt
from lpfast.torch import (
    DopedKroneckerLinear,
    LowRankEmbedding,
    LowRankLinear,
    LowRankSparseLinear,
    ProjectiveEmbedding,
    RowDopedEmbedding,
    RowDopedLinear,
    load_compressed,
    save_compressed,
)

from _torch_helpers import DTYPES, Tiny


class Zoo(nn.Module):
    """One module per layer kind, as an original model would have them."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.emb_low = nn.Embedding(50, 16, padding_idx=0, dtype=dtype)
        self.emb_proj = nn.Embedding(50, 16, dtype=dtype)
        self.emb_row = nn.Embedding(50, 16, dtype=dtype)
        self.lin = nn.ModuleDict({k: nn.Linear(24, 20, dtype=dtype)
                                  for k in ("doped", "low", "sparse", "row")})
        self.pruned = nn.Linear(24, 40, dtype=dtype)
        self.act = nn.GELU()


def compressed_zoo(dtype) -> Zoo:
    z = Zoo(dtype)
    torch.manual_seed(1)
    doped = DopedKroneckerLinear.from_linear(z.lin["doped"], (4, 6), (5, 4), density=0.3, rank=2,
                                             cmr=0.1)
    doped.prune_(0.1)  # a mask in the state
    z.lin["doped"] = doped
    z.lin["low"] = LowRankLinear(24, 20, 3, bias=False, dtype=dtype)
    z.lin["sparse"] = LowRankSparseLinear(24, 20, 2, 0.15, dtype=dtype)
    z.lin["row"] = RowDopedLinear(24, 20, 3, n_exact=4, dtype=dtype)
    z.emb_low = LowRankEmbedding(50, 16, 4, padding_idx=0, dtype=dtype)
    z.emb_proj = ProjectiveEmbedding(50, 16, 3, 4, dtype=dtype)
    z.emb_row = RowDopedEmbedding(50, 16, 3, n_exact=5, method="projective", n_subspaces=2,
                                  dtype=dtype)
    z.pruned = nn.Linear(24, 12, dtype=dtype)  # as prune_ffn leaves a narrower Linear
    return z.eval()


def outputs(z: Zoo) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dtype = z.pruned.weight.dtype
    x = torch.randn(3, 24, generator=g, dtype=dtype)
    ids = torch.randint(0, 50, (2, 5), generator=g)
    with torch.no_grad():
        out = {k: m(x) for k, m in z.lin.items()}
        out.update(emb_low=z.emb_low(ids), emb_proj=z.emb_proj(ids), emb_row=z.emb_row(ids),
                   pruned=z.pruned(x))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_layer_round_trips(tmp_path, dtype):
    z = compressed_zoo(dtype)
    path = tmp_path / "z.pt"
    save_compressed(z, path)
    fresh = load_compressed(path, Zoo(dtype).eval())
    for (name, a), (_, b) in zip(z.named_modules(), fresh.named_modules()):
        assert type(a) is type(b), name
    sd, sd2 = z.state_dict(), fresh.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
    assert fresh.lin["doped"].cmr == 0.1 and fresh.lin["doped"].S_mask is not None
    assert not fresh.training and not fresh.lin["doped"].training
    want = outputs(z)
    for k, got in outputs(fresh).items():
        assert torch.equal(got, want[k]), k


def test_compress_result_round_trips(tmp_path):
    model = Tiny()
    lt.compress(model, {"emb": "auto:8:candidates=svd/lp:1", "body.0": "doped_kron:3",
                        "body.2": "lowrank_sparse:2", "head": "lowrank:2"})
    save_compressed(model, tmp_path / "m.pt")
    fresh = load_compressed(tmp_path / "m.pt", Tiny())
    ids = torch.randint(0, 300, (2, 5))
    assert torch.equal(fresh(ids), model(ids))
    assert [type(m) for m in fresh.modules()] == [type(m) for m in model.modules()]


def test_the_file_holds_no_pickled_code(tmp_path):
    path = tmp_path / "z.pt"
    save_compressed(compressed_zoo(torch.float32), path)
    data = torch.load(path, weights_only=True)  # would raise on any pickled class
    assert data["format"] == "lpfast.compressed" and data["version"] == 1
    assert data["layers"]["lin.doped"]["class"] == "DopedKroneckerLinear"
    assert "emb_proj" in data["layers"] and "act" not in data["layers"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []


class _Boom:
    """A pickle that runs code on load: creates the file named by its argument."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_what_it_did_not_write(tmp_path):
    marker = tmp_path / "executed"
    boom = {"format": "lpfast.compressed", "x": _Boom(str(marker))}
    cases = {"boom.pt": lambda p: torch.save(boom, p),
             "model.pt": lambda p: torch.save(Zoo(), p),
             "garbage.pt": lambda p: p.write_bytes(b"not a torch file at all"),
             "empty.pt": lambda p: p.write_bytes(b""),
             "dict.pt": lambda p: torch.save({"a": 1}, p),
             "state.pt": lambda p: torch.save(Zoo().state_dict(), p),
             "version.pt": lambda p: torch.save({"format": "lpfast.compressed", "version": 99}, p)}
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(ValueError, match=f"{name}: "):
            load_compressed(tmp_path / name, Zoo())
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_compressed(tmp_path / "none.pt", Zoo())
    with pytest.raises(TypeError, match="model"):
        load_compressed(tmp_path / "dict.pt", "Zoo")
    with pytest.raises(TypeError, match="model"):
        save_compressed({"a": 1}, tmp_path / "x.pt")


def test_refuses_a_model_it_does_not_fit(tmp_path):
    path = tmp_path / "z.pt"
    save_compressed(compressed_zoo(torch.float32), path)
    with pytest.raises(ValueError, match=r"z.pt: layer 'emb_low': the model has no module"):
        load_compressed(path, Tiny())
    data = torch.load(path, weights_only=True)
    data["layers"]["lin.low"]["class"] = "os.system"
    torch.save(data, tmp_path / "cls.pt")
    with pytest.raises(ValueError, match="cls.pt: layer 'lin.low': expected"):
        load_compressed(tmp_path / "cls.pt", Zoo())
    data = torch.load(path, weights_only=True)
    data["state_dict"]["lin.doped.S_col_indices"][0] = 10**6  # checked as the layer loads
    torch.save(data, tmp_path / "idx.pt")
    fresh = Zoo()
    with pytest.raises(ValueError, match=r"'lin.doped.S_col_indices'"):
        load_compressed(tmp_path / "idx.pt", fresh)
    assert [type(m) for m in fresh.modules()] == [type(m) for m in Zoo().modules()]  # put back
    data = torch.load(path, weights_only=True)
    del data["state_dict"]["pruned.bias"]
    torch.save(data, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match="keys.pt: does not fit the model.*pruned.bias"):
        load_compressed(tmp_path / "keys.pt", Zoo())


def test_writes_to_a_file_object():
    buf = io.BytesIO()
    z = compressed_zoo(torch.float64)
    save_compressed(z, buf)
    buf.seek(0)
    fresh = load_compressed(buf, Zoo(torch.float64))
    assert torch.equal(fresh.lin["sparse"].dense_weight(), z.lin["sparse"].dense_weight())
