"""lpfast.torch.prune_ffn: FFN hidden-unit pruning in place, against a dense NumPy recomputation.

The reference records the hidden activations A (GELU outputs) of the original model,
chooses units by ‖W2[:, j]‖² · mean(A[:, j]²) and refits W2 by lstsq on A itself, then runs
the pruned network in NumPy float64.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch import nn

import lpfast
from _torch_helpers import SMALL_BERT, bert_batches, tiny_bert
from lpfast.torch import calibrate, ffn_pairs, prune_ffn

D, H, BLOCKS = 12, 48, 2
PAIRS = {"blocks.*.0": "blocks.{}.2"}


class Net(nn.Module):
    """Residual FFN blocks inside a ModuleList, then a head: a transformer's FFN path."""

    def __init__(self, hidden=H, dtype=torch.float32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, D))
                                    for _ in range(BLOCKS))
        with torch.no_grad():  # units of very different importance, as in trained FFNs
            for b in self.blocks:
                b[2].weight.mul_(torch.rand(hidden) * 3)
        self.head = nn.Linear(D, 3)
        self.to(dtype)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def data(dtype, n=6, seed=1):
    # correlated inputs: one low-rank structure (fixed across seeds, so held-out data comes
    # from the calibration distribution) that the Gram can exploit
    mix = torch.randn(4, D, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 4, generator=g) @ mix + 0.1 * torch.randn(32, D, generator=g)).to(dtype)
            for _ in range(n)]


def hidden_activations(model, batches):
    acts = {i: [] for i in range(BLOCKS)}
    hs = [b[2].register_forward_pre_hook(lambda m, a, i=i: acts[i].append(a[0].double()))
          for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hs:
        h.remove()
    return {i: torch.cat(v).numpy() for i, v in acts.items()}


def numpy_pruned_forward(model, A, k, x):
    """The pruned network in float64 NumPy from the ORIGINAL model's weights."""
    x = x.double().numpy()
    for i, b in enumerate(model.blocks):
        W1, b1 = b[0].weight.double().detach().numpy(), b[0].bias.double().detach().numpy()
        W2, b2 = b[2].weight.double().detach().numpy(), b[2].bias.double().detach().numpy()
        scores = (W2 ** 2).sum(0) * (A[i] ** 2).mean(0)
        K = np.sort(np.argsort(-scores, kind="stable")[:k])
        V = np.linalg.lstsq(A[i][:, K], A[i] @ W2.T, rcond=None)[0].T
        z = x @ W1[K].T + b1[K]
        x = x + (0.5 * z * (1 + erf(z / np.sqrt(2)))) @ V.T + b2
    return x @ model.head.weight.double().detach().numpy().T + model.head.bias.double().detach().numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_numpy_recomputation(dtype):
    model, batches = Net(dtype=dtype), data(dtype)
    A = hidden_activations(model, batches)
    x = data(dtype, n=1, seed=9)[0]
    want = numpy_pruned_forward(model, A, 20, x)
    cal = calibrate(model, batches, rules=["blocks.*.2"], progress=False)
    report = prune_ffn(model, PAIRS, cal, keep=20, ridge=0.0)
    assert [(p.first, p.second) for p in report.pairs] == [("blocks.0.0", "blocks.0.2"),
                                                           ("blocks.1.0", "blocks.1.2")]
    for b in model.blocks:
        assert type(b[0]) is nn.Linear and b[0].weight.shape == (20, D) and b[0].weight.dtype == dtype
        assert type(b[2]) is nn.Linear and b[2].weight.shape == (D, 20) and b[2].weight.dtype == dtype
    with torch.no_grad():
        got = model(x).double().numpy()
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    per_pair = 2 * D * H + H + D
    assert report.params_before == BLOCKS * per_pair
    assert report.params_after == BLOCKS * (2 * D * 20 + 20 + D)
    assert report.model_params_before - report.model_params_after == report.params_before - report.params_after
    assert all(0 <= p.error_after < p.error_before for p in report.pairs)
    assert "blocks.0.0" in str(report) and report.to_dict()["params_after"] == report.params_after


def test_keep_all_changes_nothing():
    model, batches = Net(), data(torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = calibrate(model, batches, rules=["blocks.*.2"], progress=False)
    report = prune_ffn(model, PAIRS, cal, keep=1.0)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.error_after == 0 and p.hidden_after == H for p in report.pairs)


def output_error(model, ref, xs):
    with torch.no_grad():
        return sum(float(((model(x) - ref(x)) ** 2).sum()) for x in xs) / sum(
            float((ref(x) ** 2).sum()) for x in xs)


@pytest.mark.parametrize("seed", range(3))
def test_beats_random_keep_on_held_out(seed):
    ref, batches, held = Net(seed=seed), data(torch.float32, seed=seed), data(torch.float32, seed=50 + seed)
    cal = calibrate(ref, batches, rules=["blocks.*.2"], progress=False)
    pruned = Net(seed=seed)
    prune_ffn(pruned, PAIRS, cal, keep=0.25)
    rnd = Net(seed=seed)
    g = torch.Generator().manual_seed(seed)
    for b in rnd.blocks:  # random 12 units, plain column selection
        K = torch.randperm(H, generator=g)[:12].sort().values
        l1, l2 = nn.Linear(D, 12), nn.Linear(12, D)
        with torch.no_grad():
            l1.weight.copy_(b[0].weight[K]), l1.bias.copy_(b[0].bias[K])
            l2.weight.copy_(b[2].weight[:, K]), l2.bias.copy_(b[2].bias)
        b[0], b[2] = l1, l2
    assert output_error(pruned, ref, held) < 0.5 * output_error(rnd, ref, held)


def test_state_dict_round_trip():
    model, batches = Net(), data(torch.float32)
    prune_ffn(model, PAIRS, calibrate(model, batches, rules=["blocks.*.2"], progress=False), keep=0.5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = Net(hidden=H // 2, seed=7)  # built at the pruned size, other weights
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = data(torch.float32, n=1, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_tiny_bert_pairs_and_round_trip():
    transformers = pytest.importorskip("transformers")
    model = tiny_bert(**SMALL_BERT)
    pairs = ffn_pairs(model)
    assert pairs == {f"encoder.layer.{i}.intermediate.dense": f"encoder.layer.{i}.output.dense"
                     for i in range(2)}
    batches, held = bert_batches(4, seed=0), bert_batches(2, seed=1)
    ref = tiny_bert(**SMALL_BERT)
    cal = calibrate(model, batches, rules=list(pairs.values()), progress=False)
    W2 = model.encoder.layer[0].output.dense.weight.detach().double().numpy()
    want = lpfast.prune_hidden_units(W2, cal["encoder.layer.0.output.dense"].input_gram.numpy(), 32)
    report = prune_ffn(model, {"encoder.layer.*.intermediate.dense": "encoder.layer.{}.output.dense"},
                       cal, keep=0.5)
    assert [p.hidden_after for p in report.pairs] == [32, 32]
    got = model.encoder.layer[0].output.dense.weight.detach().numpy()
    np.testing.assert_allclose(got, want.W_out.astype(np.float32), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        err = max(float((model(**b).last_hidden_state - ref(**b).last_hidden_state).abs().max())
                  for b in held)
    assert 0 < err < 1.0  # changed, but still the same model (LayerNorm'd outputs are O(1))
    cfg = transformers.BertConfig(**{**model.config.to_dict(), "intermediate_size": 32})
    fresh = transformers.BertModel(cfg).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(**held[0]).last_hidden_state, model(**held[0]).last_hidden_state)


def test_bad_input_leaves_model_unchanged():
    model, batches = Net(), data(torch.float32)
    cal = calibrate(model, batches, rules=["blocks.*.2"], progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        ({"nothing.*": "x.{}"}, cal, 0.5, ValueError, "matches no module"),
        ({"blocks.*.1": "blocks.{}.2"}, cal, 0.5, TypeError, "matches no nn.Linear"),
        ({"blocks.*.0": "blocks.{}.1"}, cal, 0.5, TypeError, "GELU, not an nn.Linear"),
        ({"blocks.*.0": "blocks.{}.9"}, cal, 0.5, ValueError, "not a module of the model"),
        ({"blocks.0.0": "head"}, cal, 0.5, ValueError, "out_features 48 but 'head' has in_features 12"),
        ({"blocks.*.0": "blocks.{}.{}.2"}, cal, 0.5, ValueError, "2 field\\(s\\) but the pattern has 1"),
        ({"blocks.*.0": "blocks.0.2"}, cal, 0.5, ValueError, "used by more than one pair"),
        ({}, cal, 0.5, ValueError, "non-empty mapping"),
        ([("blocks.0.0", "blocks.0.2")], cal, 0.5, TypeError, "mapping"),
        (PAIRS, dict(cal), 0.5, TypeError, "calibration: expected an lpfast.torch.Calibration"),
        (PAIRS, calibrate(model, batches, rules=["blocks.0.2"], progress=False), 0.5, ValueError,
         "no statistics for 'blocks.1.2'"),
        (PAIRS, calibrate(model, batches, rules=["blocks.*.2"], mode="scale", progress=False), 0.5,
         ValueError, "mode 'gram'"),
        (PAIRS, calibrate(Net(hidden=10), batches, rules=["blocks.*.2"], progress=False), 0.5,
         ValueError, "has shape \\(10, 10\\) but the layer has 48 inputs"),
        (PAIRS, cal, 49, ValueError, "keep:"),
        (PAIRS, cal, 0.0, ValueError, "keep:"),
        (PAIRS, cal, "half", TypeError, "keep:"),
    ]
    for pairs, c, keep, exc, match in cases:
        with pytest.raises(exc, match=match):
            prune_ffn(model, pairs, c, keep=keep)
    with pytest.raises(TypeError, match="model:"):
        prune_ffn("model", PAIRS, cal)
    with pytest.raises(ValueError, match="ridge:"):
        prune_ffn(model, PAIRS, cal, ridge=-1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
