"""Shared helpers of the torch tests (import after ``pytest.importorskip("torch")``):
dtypes and tolerances, small modules and models, data with known structure, the state_dict
round trip, and the exact recomputation of a compress report.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

DTYPES = [torch.float32, torch.float64]
NP = {torch.float32: np.float32, torch.float64: np.float64}
#: Kernels that sum over Kronecker factors and CSR entries in another order than torch.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}
#: Lookups and small products: the same few multiply-adds as the dense recomputation.
TIGHT = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def linear(n_in=24, n_out=20, dtype=torch.float32, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias, dtype=dtype)


def embedding(n=120, d=16, dtype=torch.float32, seed=0, **kw) -> nn.Embedding:
    torch.manual_seed(seed)
    return nn.Embedding(n, d, dtype=dtype, **kw)


def matrix(n: int = 120, d: int = 12, dtype=np.float64, seed: int = 0) -> np.ndarray:
    """Rows near a 3-dim subspace plus a few far rows (so doping stores some)."""
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + 0.1 * rng.standard_normal((n, d))
    E[rng.choice(n, 6, replace=False)] += 4 * rng.standard_normal((6, d))
    return E.astype(dtype)


def zipf_counts(n: int, seed: int = 0) -> np.ndarray:
    """Token counts with a Zipf-like tail, in random row order."""
    rng = np.random.default_rng(seed)
    return np.floor(1e5 / np.arange(1, n + 1) ** 1.1)[rng.permutation(n)]


def roundtrip_state_dict(layer: nn.Module, fresh: nn.Module) -> nn.Module:
    """fresh with layer's state_dict loaded through torch.save/torch.load."""
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    return fresh


class Tiny(nn.Module):
    """An embedding (300 x 32), an FFN (32 -> 48 -> 32) and an unbiased head (32 -> 10)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(300, 32, dtype=dtype)
        self.body = nn.Sequential(nn.Linear(32, 48, dtype=dtype), nn.ReLU(),
                                  nn.Linear(48, 32, dtype=dtype))
        self.head = nn.Linear(32, 10, bias=False, dtype=dtype)

    def forward(self, idx):
        return self.head(self.body(self.emb(idx)).mean(1))


def tiny_bert():
    """transformers.BertConfig, built locally (no download): vocabulary 1000, hidden 64."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=256,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def check_report_exact(report, model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Every number of the report recomputed from the modules themselves."""
    assert report.model_params_after == n_params(model)
    for row in report.layers:
        old, new = originals[row.name], model.get_submodule(row.name)
        assert row.params_before == n_params(old)
        assert row.params_after == n_params(new)
        W = old.weight.detach().double()
        err = torch.linalg.norm(W - new.dense_weight().double()) / torch.linalg.norm(W)
        assert row.relative_error == pytest.approx(float(err), rel=1e-12)
        assert row.ratio == row.params_before / row.params_after
    assert report.model_params_before - report.params_before + report.params_after \
        == report.model_params_after
