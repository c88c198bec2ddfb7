"""Shared helpers of the torch tests (tests/torch/, whose conftest skips without torch,
and the command line's in test_cli.py):
dtypes and tolerances, small modules and models, data with known structure, the state_dict
round trip, and the exact recomputation of a compress report.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import lpfast

from shared import DTYPES as NP_DTYPES
from shared import matrix, zipf_counts  # noqa: F401  (re-exported for the torch tests)

#: The torch dtype of each of shared.DTYPES (one definition of the dtypes tested), and back.
NP = {getattr(torch, np.dtype(d).name): d for d in NP_DTYPES}
DTYPES = list(NP)
#: Kernels that sum over Kronecker factors and CSR entries in another order than torch.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}
#: Lookups and small products: the same few multiply-adds as the dense recomputation.
TIGHT = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture
def one_thread():
    """lpfast and torch on one thread for the test (restored after): for tiny layers a second
    thread only adds contention; on a loaded machine spinning thread pools made each step
    many times slower. Use: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = lpfast.get_num_threads(), torch.get_num_threads()
    lpfast.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    lpfast.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def linear(n_in=24, n_out=20, dtype=torch.float32, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias, dtype=dtype)


def embedding(n=120, d=16, dtype=torch.float32, seed=0, **kw) -> nn.Embedding:
    torch.manual_seed(seed)
    return nn.Embedding(n, d, dtype=dtype, **kw)


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


def tiny_bert(vocab: int = 1000, hidden: int = 64, layers: int = 2, ffn: int = 256,
              positions: int = 64):
    """A transformers.BertModel built from a config (no download), in eval mode, 2 heads;
    the compress tests use the default, calibrate/distill a smaller one (:data:`SMALL_BERT`)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=ffn,
                                  max_position_embeddings=positions)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


#: The calibrate and distill tests' BERT: vocabulary 100, hidden 32, FFN 32 -> 64 -> 32.
SMALL_BERT = dict(vocab=100, hidden=32, ffn=64, positions=32)


def bert_batches(n: int, seed: int, batch: int = 4, tokens: int = 12,
                 vocab: int = SMALL_BERT["vocab"]) -> list[dict]:
    """``n`` tokenizer-like dict batches of random ids, full attention masks."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (batch, tokens), generator=g),
             "attention_mask": torch.ones(batch, tokens, dtype=torch.long)} for _ in range(n)]


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
