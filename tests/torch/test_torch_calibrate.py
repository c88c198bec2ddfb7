"""lpfast.torch.calibrate: streaming input statistics against a dense recomputation.

The reference records every input of every Linear with its own hooks, concatenates them
and computes XᵀX / n, Σx² / n, Σx / n in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lpfast.torch as lt
from _torch_helpers import SMALL_BERT, bert_batches, tiny_bert
from lpfast.torch import Calibration, calibrate


def mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.GELU(), nn.Linear(20, 6)).to(dtype)


def batches_for(dtype, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    # varied leading shapes: rows are everything but the last dimension
    shapes = [(5, 12), (2, 3, 12), (7, 12), (1, 12)][:n]
    return [torch.randn(*s, generator=g, dtype=dtype) for s in shapes]


def recorded_inputs(model, batches, names, call=lambda m, b: m(b)):
    """Every input each named Linear sees, as one float64 (rows, in) matrix per layer."""
    seen = {n: [] for n in names}
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_pre_hook(
        lambda mod, args, n=n: seen[n].append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for n in names]
    with torch.no_grad():
        for b in batches:
            call(model, b)
    for h in handles:
        h.remove()
    return {n: torch.cat(v).double() for n, v in seen.items()}


def no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_statistics_equal_dense_recomputation(dtype):
    model = mlp(dtype)
    batches = batches_for(dtype)
    cal = calibrate(model, batches, progress=False)
    assert list(cal) == ["0", "2"] and cal.mode == "gram" and cal.n_batches == 4
    ref = recorded_inputs(model, batches, ["0", "2"])
    for name, X in ref.items():
        s = cal[name]
        n = X.shape[0]
        assert s.n_rows == n == 5 + 6 + 7 + 1
        assert s.in_features == X.shape[1]
        assert s.input_gram.dtype == torch.float64
        torch.testing.assert_close(s.input_gram, X.T @ X / n, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s.gram, s.input_gram)
        assert torch.equal(s.input_scale, s.scale)
        torch.testing.assert_close(s.scale, (X * X).mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s.mean, X.mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s.scale, torch.diagonal(s.input_gram), rtol=1e-12, atol=1e-14)


def test_scale_mode_is_the_diagonal():
    model, batches = mlp(), batches_for(torch.float32)
    full = calibrate(model, batches, progress=False)
    scale = calibrate(model, batches, mode="scale", progress=False)
    for name in full:
        assert scale[name].gram_sum is None and scale[name].input_gram is None
        assert scale[name].n_rows == full[name].n_rows
        torch.testing.assert_close(scale[name].scale, torch.diagonal(full[name].input_gram),
                                   rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(scale[name].mean, full[name].mean, rtol=1e-12, atol=1e-14)


def test_mean_over_rows_compares_across_batch_counts():
    model, batches = mlp(torch.float64), batches_for(torch.float64)
    once = calibrate(model, batches, progress=False)
    twice = calibrate(model, batches + batches, progress=False)
    for name in once:
        assert twice[name].n_rows == 2 * once[name].n_rows
        # a mean over rows: the same data twice gives the same statistics (up to rounding)
        torch.testing.assert_close(twice[name].input_gram, once[name].input_gram,
                                   rtol=1e-13, atol=1e-15)


def test_deterministic_and_restores_training_flags():
    model, batches = mlp(), batches_for(torch.float32)
    model.train()
    model[2].eval()
    a = calibrate(model, iter(batches), progress=False)  # a one-shot iterator is enough
    b = calibrate(model, batches, progress=False)
    assert model.training and model[0].training and not model[2].training
    for name in a:
        assert torch.equal(a[name].gram_sum, b[name].gram_sum)
        assert torch.equal(a[name].sum, b[name].sum)
    assert no_hooks(model)


def test_rules_forms_and_max_batches():
    model, batches = mlp(), batches_for(torch.float32)
    assert list(calibrate(model, batches, "2", progress=False)) == ["2"]
    assert list(calibrate(model, batches, ["2", "0"], progress=False)) == ["0", "2"]
    # a compress rules mapping: its keys are the patterns
    assert list(calibrate(model, batches, {"0": "lowrank:2"}, progress=False)) == ["0"]
    cal = calibrate(model, batches, max_batches=2, progress=False)
    assert cal.n_batches == 2 and cal["0"].n_rows == 5 + 6


def test_save_load_round_trip(tmp_path):
    model, batches = mlp(torch.float64), batches_for(torch.float64)
    for mode in ("gram", "scale"):
        cal = calibrate(model, batches, mode=mode, progress=False)
        for fname in ("cal.npz", "cal.pt"):
            cal.save(tmp_path / fname)
            back = Calibration.load(tmp_path / fname)
            assert list(back) == list(cal) and back.mode == mode and back.n_batches == 4
            for name in cal:
                for key, value in cal[name].to_dict().items():
                    other = back[name].to_dict()[key]
                    assert (torch.equal(value, other) if isinstance(value, torch.Tensor)
                            else value == other)
    with pytest.raises(ValueError, match="not an lpfast calibration"):
        Calibration.from_dict({"layers": {}})


def test_load_of_a_file_that_is_no_calibration_names_it(tmp_path):
    model, batches = mlp(torch.float64), batches_for(torch.float64)
    good = calibrate(model, batches, progress=False).to_dict()
    files = {"garbage.pt": b"\x00garbage, not a torch file" * 10,
             "garbage.npz": b"PK\x03\x04 truncated zip",
             "empty.pt": b""}
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    torch.save({"a": 1}, tmp_path / "dict.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save(dict(good, mode="magic"), tmp_path / "mode.pt")
    broken = dict(good, layers={"0": dict(good["layers"]["0"], sum=torch.zeros(3))})
    torch.save(broken, tmp_path / "shape.pt")
    torch.save(dict(good, layers={"0": {"in_features": 4}}), tmp_path / "keys.pt")
    np.savez(tmp_path / "nometa.npz", x=np.ones(3))
    for name in [*files, "dict.pt", "list.pt", "mode.pt", "shape.pt", "keys.pt", "nometa.npz"]:
        with pytest.raises(ValueError, match=f"{name}: not a saved lpfast calibration"):
            Calibration.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        Calibration.load(tmp_path / "none.pt")


def test_progress_goes_to_stderr(capsys):
    calibrate(mlp(), batches_for(torch.float32), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "calibrate" in err


def test_tiny_bert_dict_batches():
    model = tiny_bert(**SMALL_BERT)
    model.train()
    batches = bert_batches(3, 0, batch=2, tokens=9)
    rules = {"*.intermediate.dense": "doped_kron:2", "embeddings.word_embeddings": "lowrank:2"}
    with pytest.raises(ValueError, match="word_embeddings \\(Embedding\\)"):
        calibrate(model, batches, rules, progress=False)
    cal = calibrate(model, batches, rules, progress=False, strict=False)
    names = ["encoder.layer.0.intermediate.dense", "encoder.layer.1.intermediate.dense"]
    assert list(cal) == names and model.training  # training flag restored
    model.eval()
    ref = recorded_inputs(model, batches, names, call=lambda m, b: m(**b))
    for name, X in ref.items():
        assert cal[name].n_rows == 3 * 2 * 9
        torch.testing.assert_close(cal[name].input_gram, X.T @ X / X.shape[0],
                                   rtol=1e-12, atol=1e-14)


# -- bad input ---------------------------------------------------------------------------------

def test_non_linear_target_and_no_match():
    model, batches = mlp(), batches_for(torch.float32)
    with pytest.raises(ValueError, match=r"pattern '1' matches no nn.Linear, only 1 \(GELU\)"):
        calibrate(model, batches, "1", progress=False)
    with pytest.raises(ValueError, match="'nothing' matches no module"):
        calibrate(model, batches, ["0", "nothing"], progress=False)
    with pytest.raises(TypeError, match="rules"):
        calibrate(model, batches, 3, progress=False)
    with pytest.raises(TypeError, match="model"):
        calibrate("model", batches, progress=False)
    with pytest.raises(ValueError, match="mode"):
        calibrate(model, batches, mode="diag", progress=False)


def test_empty_calibration_set():
    model = mlp()
    with pytest.raises(ValueError, match="empty"):
        calibrate(model, [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        calibrate(model, iter(()), progress=False)
    with pytest.raises(TypeError, match="iterable of batches"):
        calibrate(model, torch.randn(3, 12), progress=False)  # one batch, not a list
    with pytest.raises(ValueError, match="max_batches"):
        calibrate(model, [torch.randn(3, 12)], max_batches=0, progress=False)
    assert no_hooks(model)


def test_nan_in_activations_names_the_layer():
    model = mlp()
    batches = batches_for(torch.float32)
    with torch.no_grad():
        model[0].bias[3] = math.inf  # finite batches, Inf/NaN only from layer 2's input on
    with pytest.raises(ValueError, match=r"batches\[0\]: the input of layer '2' contains NaN"):
        calibrate(model, batches, progress=False)
    assert no_hooks(model)
    model = mlp()
    batches[2][1, 4] = math.nan
    with pytest.raises(ValueError, match=r"batches\[2\]: the input of layer '0'"):
        calibrate(model, batches, progress=False)
    assert no_hooks(model)


def test_wrong_shape_batch_reraises_with_its_index():
    model = mlp()
    model.train()
    batches = batches_for(torch.float32) + [torch.randn(3, 11)]
    with pytest.raises(RuntimeError, match=r"batches\[4\]: the model failed") as info:
        calibrate(model, batches, progress=False)
    assert "mat1 and mat2" in str(info.value.__cause__)  # the model's own error, chained
    assert no_hooks(model) and all(m.training for m in model.modules())
    with pytest.raises(TypeError, match=r"batches\[1\]: expected a Tensor"):
        calibrate(model, [torch.randn(2, 12), 5], progress=False)
    assert no_hooks(model)


def test_unused_linear_warns_and_is_left_out():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    model = Partial()
    with pytest.warns(UserWarning, match="spare"):
        cal = calibrate(model, [torch.randn(3, 4)], progress=False)
    assert list(cal) == ["used"]
    with pytest.raises(ValueError, match="was called"):
        calibrate(model, [torch.randn(3, 4)], "spare", progress=False)


def test_exported():
    assert lt.calibrate is calibrate and "calibrate" in lt.__all__
