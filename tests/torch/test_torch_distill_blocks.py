"""lpfast.torch.distill(mode="block"): sequential per-block distillation.

A tiny BertModel (2 layers, built from a config) whose FFN pairs ``lt.prune_ffn`` pruned to
half their hidden units: their widths changed, so only the blocks' outputs give them a
target. Errors are checked against a recomputation with forward hooks on both models.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _torch_helpers import (SMALL_BERT, bert_batches, one_thread,  # noqa: F401 (a fixture)
                            tiny_bert)
from lpfast.torch import calibrate, compress, distill, ffn_pairs, output_error, prune_ffn

BLOCKS = "encoder.layer.*"

pytestmark = pytest.mark.usefixtures("one_thread")


def pruned(dtype=torch.float32, keep=0.5):
    """(pruned model, original, training batches, pruned layer names)."""
    model = tiny_bert(**SMALL_BERT).to(dtype)
    original = copy.deepcopy(model)
    batches = bert_batches(6, seed=0)
    pairs = ffn_pairs(model)
    prune_ffn(model, pairs, calibrate(model, batches, list(pairs.values()), progress=False),
              keep=keep)
    return model, original, batches, [n for pair in pairs.items() for n in pair]


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def block_outputs(model, batches, name):
    """The block's first output on every batch, from a full forward pass (a dense recomputation)."""
    got = []
    h = model.get_submodule(name).register_forward_hook(
        lambda m, a, out: got.append((out[0] if isinstance(out, tuple) else out).detach()))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        h.remove()
    return got


def rel_mse(pred, target):
    num = sum(float(((p.double() - t.double()) ** 2).sum()) for p, t in zip(pred, target))
    return num / sum(float((t.double() ** 2).sum()) for t in target)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_mode_recovers_pruned_ffn(dtype):
    model, original, batches, names = pruned(dtype)
    held = bert_batches(3, seed=1)
    first_before = rel_mse(block_outputs(model, batches, "encoder.layer.0"),
                           block_outputs(original, batches, "encoder.layer.0"))
    before = output_error(model, original, held)
    model.train()  # distill leaves it in eval mode
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    original_state = params(original)
    before_state = params(model)
    report = distill(model, original, batches, mode="block", blocks=BLOCKS, steps=80,
                     progress=False)
    after = output_error(model, original, held)
    assert after < 0.8 * before, (before, after, str(report))
    assert report.mode == "block" and report.steps == 160 and report.stopped_by == "steps"
    assert [r.name for r in report.layers] == ["encoder.layer.0", "encoder.layer.1"]
    for r in report.layers:
        assert r.kind == "BertLayer" and r.rows == 6 * 4 * 12 and r.steps == 80
        assert r.error_after < r.error_before and not r.restored
    # block 0 sees the original's inputs (embeddings untouched): its error is the hooked one
    assert report.layers[0].error_before == pytest.approx(first_before, rel=1e-9)
    # the last block's output is the model's, fed by the distilled block 0, as when it trained
    assert report.layers[-1].error_after == pytest.approx(report.output_error_after, rel=1e-9)
    # only the pruned Linears moved; everything else and the original are untouched
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before_state[k])}
    assert moved and all(k.rsplit(".", 1)[0] in names for k in moved)
    assert all(torch.equal(v, original_state[k]) for k, v in original.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert not any(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert "distill (block)" in str(report)


@pytest.mark.parametrize("seed", [3])
def test_deterministic_and_round_trip(seed):
    runs = []
    for s in (seed, seed, seed + 1):
        model, original, batches, _ = pruned()
        distill(model, original, batches, mode="block", blocks=BLOCKS, steps=15, seed=s,
                progress=False)
        runs.append(model)
    a, b, c = (params(m) for m in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    fresh = pruned()[0]
    fresh.load_state_dict(a)
    assert all(torch.equal(v, a[k]) for k, v in fresh.state_dict().items())
    x = bert_batches(1, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(fresh(**x).last_hidden_state, runs[0](**x).last_hidden_state)


def test_compressed_layers_and_explicit_layers():
    """Layers compress replaced (another type) train in their block; layers= restricts what
    trains to the named ones."""
    model = tiny_bert(**SMALL_BERT)
    rules = {"encoder.layer.0.intermediate.dense": "lowrank:4",
             "encoder.layer.0.output.dense": "lowrank:4"}
    c = copy.deepcopy(model)
    compress(c, rules)
    batches, held = bert_batches(6, 0), bert_batches(3, 1)
    before = output_error(c, model, held)
    start = params(c)
    report = distill(c, model, batches, mode="block", blocks=["encoder.layer.0"], steps=60,
                     layers=["encoder.layer.0.output.dense"], progress=False)
    assert output_error(c, model, held) < before
    assert report.layers[0].error_after < report.layers[0].error_before
    moved = {k for k, v in c.state_dict().items() if not torch.equal(v, start[k])}
    assert moved and all(k.startswith("encoder.layer.0.output.dense.") for k in moved)


def test_budgets_and_guard():
    model, original, batches, _ = pruned()
    start = params(model)
    report = distill(model, original, batches, mode="block", blocks=BLOCKS, time_budget=0,
                     progress=False)
    assert report.steps == 0 and report.stopped_by == "time"
    assert [r.error_after for r in report.layers] == [r.error_before for r in report.layers]
    report = distill(model, original, batches, mode="block", blocks=BLOCKS, steps=10, lr=50.0,
                     progress=False)  # diverges: each block gets its parameters back
    assert all(r.restored for r in report.layers)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_bad_input():
    model, original, batches, names = pruned()
    kw = dict(steps=2, progress=False)
    with pytest.raises(ValueError, match="blocks: only for mode='block'"):
        distill(model, original, batches, mode="end_to_end", blocks=BLOCKS, layers=names, **kw)
    with pytest.raises(ValueError, match="blocks: required with mode='block'"):
        distill(model, original, batches, mode="block", **kw)
    with pytest.raises(ValueError, match="blocks: 'decoder.*' names no submodule"):
        distill(model, original, batches, mode="block", blocks="decoder.*", **kw)
    with pytest.raises(ValueError, match="blocks: 'encoder.layer.0.attention' lies inside"):
        distill(model, original, batches, mode="block",
                blocks=["encoder.layer.0", "encoder.layer.0.attention"], **kw)
    with pytest.raises(ValueError, match="blocks: 'embeddings' holds no compressed"):
        distill(model, original, batches, mode="block", blocks=["embeddings", BLOCKS], **kw)
    with pytest.raises(ValueError, match="layers: 'encoder.layer.1.intermediate.dense' lies in none"):
        distill(model, original, batches, mode="block", blocks="encoder.layer.0",
                layers=names, **kw)
    with pytest.raises(ValueError, match="blocks: expected"):
        distill(model, original, batches, mode="block", blocks=[], **kw)
    with pytest.raises(TypeError, match="blocks: expected"):
        distill(model, original, batches, mode="block", blocks=3, **kw)
    with pytest.raises(ValueError, match="widths differ.*mode='block'"):
        distill(model, original, batches, mode="layer", layers=names, **kw)
    assert all(not m._forward_pre_hooks and not m._forward_hooks
               for mod in (model, original) for m in mod.modules())


def test_doped_layer_anneals_in_its_block():
    model = tiny_bert(**SMALL_BERT)
    c = copy.deepcopy(model)
    compress(c, {"encoder.layer.1.intermediate.dense": "doped_kron:2"})
    layer = c.get_submodule("encoder.layer.1.intermediate.dense")
    target = 0.5 * layer.density
    report = distill(c, model, bert_batches(4, 0), mode="block", blocks="encoder.layer.1",
                     steps=20, target_density=target, progress=False)
    assert layer.S_mask is None and layer.nnz == round(target * 64 * 32)  # compacted
    assert [r.name for r in report.layers] == ["encoder.layer.1"] and not report.layers[0].restored
