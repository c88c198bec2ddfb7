"""A tiny run of bench/doping_lm.py: corpus pipeline, budgets, and every method trains and is
scored (a few hundred words, a few steps, seconds).

    PYTHONPATH=python python -m pytest -q bench/test_doping_lm.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest.importorskip("torch")

import doping_lm as dl  # noqa: E402

SENTENCES = [
    "The river runs past the old mill and the mill turns slowly.",
    "In 1901 the town built a bridge of stone over the river.",
    "Farmers brought grain to the mill every autumn!",
    "The bridge stood for 120 years before the flood of 2021.",
    "Children walked to school across the bridge each morning.",
    "Is the mill still working today? It is a museum now.",
]


def _corpus(tmp_path: Path, n_docs: int = 12) -> Path:
    docs = []
    for d in range(n_docs):
        lines = [SENTENCES[(d + k) % len(SENTENCES)] for k in range(6)]
        docs.append("\n".join(f"{lines[k]} Document {d} line {k}." for k in range(len(lines))))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_tokenize_follows_ptb_conventions():
    toks = dl.tokenize("The Bridge of 1901 stood. Did it? Yes!\nA new line's here")
    assert toks == ["the", "bridge", "of", "N", "stood", "<eos>", "did", "it", "<eos>", "yes",
                    "<eos>", "a", "new", "line's", "here", "<eos>"]


def test_split_keeps_documents_whole_and_is_deterministic():
    docs = [[f"d{i}w{j}" for j in range(10 + i)] for i in range(30)]
    train, valid, test = dl.split_corpus(docs, seed=3)
    assert (train, valid, test) == dl.split_corpus(docs, seed=3)
    owner = {}
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        for w in part:
            owner.setdefault(w.split("w")[0], set()).add(name)
    assert all(len(v) == 1 for v in owner.values())
    total = sum(map(len, docs))
    assert 0.1 * total <= len(test) < 0.2 * total and 0.1 * total <= len(valid) < 0.2 * total


def test_read_documents_splits_on_blank_lines():
    assert dl.read_documents("a b\nc\n\n \n\nd e\n\n") == ["a b\nc", "d e"]


@pytest.mark.parametrize("factor", [4.0, 10.0])
def test_plans_fill_but_do_not_exceed_the_budget(factor):
    import torch

    E = H = 32
    budget = dl.dense_stored(E, H, 2) / factor
    args = dl.parse(["--hidden", "32"])
    for method in ("dopedkp", "kp", "lmf", "prune", "small"):
        torch.manual_seed(0)
        model, cfg = dl.build(method, factor, args, 50)
        if method in ("dopedkp", "prune"):
            model.rnn.prune_(cfg["density"])
        stored = dl.lstm_storage(model.rnn)["stored"]
        assert 0.6 * budget <= stored <= budget, (method, stored, budget)


def test_tiny_run_trains_every_method(tmp_path):
    out = tmp_path / "res.json"
    res = dl.main(["--text", str(_corpus(tmp_path)), "--hidden", "16", "--vocab", "60",
                   "--steps", "4", "--warmup", "1", "--prune-every", "1", "--factors", "4",
                   "--methods", *dl.METHODS, "--out", str(out)], log=lambda s: None)
    rows = {(r["method"], r["factor"]): r for r in res["rows"]}
    assert len(rows) == 1 + 7
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    dense = rows[("dense", 1.0)]["lstm"]["stored"]
    for (method, factor), r in rows.items():
        assert math.isfinite(r["test_ppl"]) and r["test_ppl"] < 60 * 1.5, method
        assert r["steps"] == 4 and not r["truncated"]
        if method != "dense":
            assert r["lstm"]["stored"] <= dense / factor, method
    # annealing reached the planned density, and CMR's off switch reached the matrices
    doped = rows[("dopedkp", 4.0)]
    size = sum(r * c for _, (r, c) in dl.gate_shapes(16, 16, 2))
    assert doped["lstm"]["indices"] - 4 * (4 * 16 + 1) == pytest.approx(
        doped["config"]["density"] * size, abs=4)
    assert "decoder" in rows[("dopedkp_dec", 4.0)]


def test_latency_runs_on_paper_shapes_and_trained_checkpoints(tmp_path):
    import lpfast

    if not hasattr(lpfast, "DopedLSTMRuntime"):
        pytest.skip("lpfast.DopedLSTMRuntime is not in this build")
    import doping_lm_latency as lat

    ckpt = tmp_path / "models"
    dl.main(["--text", str(_corpus(tmp_path)), "--hidden", "16", "--vocab", "60", "--steps", "3",
             "--warmup", "1", "--prune-every", "1", "--factors", "4", "--methods", "dense",
             "dopedkp", "dopedkp_dec", "--save-dir", str(ckpt), "--out",
             str(tmp_path / "r.json")], log=lambda s: None)
    res = lat.main(["--hidden", "16", "--vocab", "40", "--factor", "4", "--batches", "1", "2",
                    "--threads", "1", "--rounds", "1", "--seconds", "0.001", "--checkpoints",
                    str(ckpt), "--out", str(tmp_path / "lat.json")], log=lambda s: None)
    labels = {r["model"] for r in res["rows"]}
    assert {"trained dopedkp_4x", "trained dopedkp_dec_4x"} <= labels
    assert all(r[k] > 0 for r in res["rows"] for k in ("torch_us", "torch_plain_us", "doped_us"))


@pytest.mark.parametrize("argv", [["--factors", "1"], ["--steps", "0"],
                                  ["--anneal-start", "0.7", "--anneal-end", "0.5"],
                                  ["--methods", "svd"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit):
        dl.parse(argv)
