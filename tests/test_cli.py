"""The command line (``python -m lpfast``), in one file that runs without torch.

Layout:
  demo, info          the default job's robust-fit and planner sections, the dispatch
  plan                tables, ratios, JSON, plots and every user error, on .npy input
  plan, torch files   state_dicts, pickled models, tensors (skip without torch)
  compress            a saved torch model (skip without torch)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import lpfast
import lpfast.__main__ as cli
from lpfast.__main__ import main
from lpfast.cli import demo as cli_demo

from shared import matrix, zipf_counts


try:  # torch is optional: only the .pt inputs and `compress` need it
    import torch

    # A saved-model stand-in, importable by name so that torch.save can pickle it.
    from _torch_helpers import Tiny
except ImportError:
    torch = None


@pytest.fixture(autouse=True)
def torch_threads():
    """`--threads` sets torch's thread count, and torch sets OpenMP's default with it: restore
    both, or later tests see a default of 1 thread."""
    n = None if torch is None else torch.get_num_threads()
    yield
    if n is not None:
        torch.set_num_threads(n)


def tiny_model():
    """(torch, a fresh Tiny model); skips the test without torch."""
    if torch is None:
        pytest.skip("torch is not installed")
    return torch, Tiny()


# -- demo, info --------------------------------------------------------------------------------

def test_robust_section_shows_l1_recovering_the_subspace_svd_misses(capsys):
    cli_demo.demo_robust(seed=0)
    out = capsys.readouterr().out
    angles = {name: float(a) for name, a in
              re.findall(r"^(SVD \(p=2\)|l1 IRLS ?): largest angle to the planted subspace +"
                         r"([0-9.]+) deg", out, flags=re.M)}
    assert set(angles) == {"SVD (p=2)", "l1 IRLS "}, out
    assert angles["l1 IRLS "] < 1.0 < 5.0 < angles["SVD (p=2)"]


def test_planner_section_prints_a_ranked_table(capsys):
    cli_demo.demo_planner(seed=0)
    out = capsys.readouterr().out
    rows = re.findall(r"^ *(\d+)  (\S+) .* (\d\.\d+) +\S+ +\S+$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 10
    errors = [float(r[2]) for r in rows]
    assert errors == sorted(errors)
    assert "+doped" in rows[0][1]  # usage-weighted doping wins on this vocabulary


def test_default_is_the_demo(monkeypatch):
    called = []
    monkeypatch.setattr(cli, "demo", lambda args: called.append(args.command) or 0)
    assert cli.main([]) == 0 and called == ["demo"]


def test_info_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "lpfast", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert f"lpfast {lpfast.__version__}" in out and "OpenMP:" in out


# -- plan --------------------------------------------------------------------------------------

def test_plan_table_ratios_json(tmp_path, capsys):
    E = matrix(200, 16, np.float32)
    counts = zipf_counts(200)
    np.save(tmp_path / "E.npy", E)
    np.save(tmp_path / "c.npy", counts)
    out_json = tmp_path / "plan.json"
    code = main(["plan", str(tmp_path / "E.npy"), "--ratio", "8", "--ratios", "4,8",
                 "--counts", str(tmp_path / "c.npy"), "--candidates", "svd,lp:1.5,projective:2",
                 "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    assert "200 x 16 float32; usage-weighted planning at ratio 4, 8" in out
    assert "compression plan for a 200 x 16 matrix at ratio 4" in out
    assert "compression plan for a 200 x 16 matrix at ratio 8" in out
    assert "[6/6] " in out and "error by ratio" in out
    data = json.loads(out_json.read_text())
    assert [p["ratio"] for p in data] == [4, 8]
    # same seed, same plan as the library call
    want = lpfast.plan_compression(E, 8, weights=lpfast.usage_weights(counts), seed=0,
                                   candidates=["svd", "lp:1.5", "projective:2"])
    got = data[1]["rows"]
    assert [r["candidate"] for r in got] == [r["candidate"] for r in want.rows]
    assert [r["n_params"] for r in got] == [r["n_params"] for r in want.rows]
    np.testing.assert_allclose([r["error"] for r in got], [r["error"] for r in want.rows], rtol=1e-6)
    assert main(["plan", str(tmp_path / "E.npy"), "--ratio", "6", "--markdown", "--quiet",
                 "--candidates", "svd", "--doping", "only"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | svd+doped |" in out.replace("  ", " ") and "[1/1]" not in out


def test_plan_weights_npz_and_txt_inputs(tmp_path, capsys):
    E = matrix(120, 10)
    np.savez(tmp_path / "m.npz", emb=E, other=np.ones(3))
    np.savetxt(tmp_path / "w.txt", np.linspace(1, 2, 120))
    args = ["--ratio", "4", "--candidates", "svd", "--quiet", "--doping", "none"]
    assert main(["plan", f"{tmp_path / 'm.npz'}:emb", "--weights", str(tmp_path / "w.txt"),
                 *args]) == 0
    out = capsys.readouterr().out
    want = lpfast.plan_compression(E, 4, weights=np.linspace(1, 2, 120), candidates=["svd"],
                                   doping=(False,), seed=0)
    assert "120 x 10 float64; usage-weighted planning" in out
    assert f"{want.rows[0]['error']:.5g}" in out
    assert main(["plan", str(tmp_path / "m.npz"), *args]) == 0  # the one 2-d entry
    assert main(["plan", str(tmp_path / "m.npz"), "--counts", "c", "--weights", "w", *args]) == 2
    assert "not both" in capsys.readouterr().err


def test_plan_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "E.npy", matrix(150, 12))
    png = tmp_path / "plot.png"
    code = main(["plan", str(tmp_path / "E.npy"), "--ratios", "3,6", "--candidates", "svd,lp:1",
                 "--plot", str(png), "--quiet"])
    assert code == 0 and f"plot: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plan_errors(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "E.npy", matrix(100, 8))
    np.save(tmp_path / "c.npy", zipf_counts(99))
    E = str(tmp_path / "E.npy")
    cases = [([E], "--ratio"), ([E, "--ratio", "1"], "> 1"), ([E, "--ratios", "4,x"], "--ratios"),
             ([str(tmp_path / "none.npy"), "--ratio", "4"], "no such file"),
             ([E, "--ratio", "4", "--counts", str(tmp_path / "c.npy")], "99 counts for 100 rows"),
             ([E + ":x", "--ratio", "4"], "drop ':x'"),
             ([E, "--ratio", "4", "--candidates", "magic"], "candidates"),
             ([E, "--ratio", "1000"], "ratio")]
    for argv, msg in cases:
        assert main(["plan", *argv]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["plan", E, "--ratio", "4", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "lpfast[plot]" in err
    assert not (tmp_path / "p.png").exists()


# -- plan, torch files -------------------------------------------------------------------------

def test_plan_torch_inputs(tmp_path, capsys):
    torch, model = tiny_model()
    sd_path, model_path = tmp_path / "sd.pt", tmp_path / "model.pt"
    torch.save(model.state_dict(), sd_path)
    torch.save(model, model_path)
    args = ["--ratio", "4", "--candidates", "svd", "--quiet"]
    assert main(["plan", f"{sd_path}:emb", *args]) == 0  # ".weight" may be left out
    assert "300 x 32" in capsys.readouterr().out
    assert main(["plan", f"{sd_path}:body.2.weight", *args]) == 0
    assert "32 x 48" in capsys.readouterr().out
    assert main(["plan", str(sd_path), *args]) == 2  # several 2-d entries: name one
    assert "name one" in capsys.readouterr().err
    assert main(["plan", f"{sd_path}:nothing", *args]) == 2
    assert "no entry 'nothing'" in capsys.readouterr().err
    assert main(["plan", f"{model_path}:emb", *args]) == 2  # a pickled model needs consent
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["plan", f"{model_path}:emb", "--allow-pickle", *args]) == 0
    torch.save(model.emb.weight.detach(), tmp_path / "t.pt")
    assert main(["plan", str(tmp_path / "t.pt"), *args]) == 0


# -- compress ----------------------------------------------------------------------------------

def test_compress(tmp_path, capsys):
    torch, model = tiny_model()
    import lpfast.torch as lt

    src, dst, rep = tmp_path / "in.pt", tmp_path / "out.pt", tmp_path / "report.json"
    torch.save(model, src)
    code = main(["compress", str(src), str(dst), "--allow-pickle", "--rule", "emb=lowrank:4:p=1.0",
                 "--rule", "body.0=doped_kron:3:a_shape=6x4,b_shape=8x8",
                 "--report-json", str(rep), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/2] emb" in out and "[2/2] body.0" in out and "model:" in out
    loaded = lt.load_compressed(dst, Tiny())  # no unpickling: the original architecture
    assert isinstance(loaded.emb, lt.LowRankEmbedding)
    assert isinstance(loaded.body[0], lt.DopedKroneckerLinear)
    data = json.loads(rep.read_text())
    assert [r["name"] for r in data["layers"]] == ["emb", "body.0"]
    assert data["model_params_after"] == sum(p.numel() for p in loaded.parameters())
    assert loaded(torch.randint(0, 300, (2, 5))).shape == (2, 10)


def test_compress_auto(tmp_path, capsys):
    torch, model = tiny_model()
    import lpfast.torch as lt

    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(model, src)
    np.save(tmp_path / "counts.npy", zipf_counts(300))
    code = main(["compress", str(src), str(dst), "--allow-pickle", "--threads", "1", "--rule",
                 f"emb=auto:8:candidates=svd/lp:1,counts={tmp_path / 'counts.npy'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/1] emb" in out and "plan [4/4] " in out and "plan: best" in out
    assert "compression plan for a 300 x 32 matrix at ratio 8" in out
    loaded = lt.load_compressed(dst, Tiny())
    assert isinstance(loaded.emb, (lt.RowDopedEmbedding, lt.LowRankEmbedding))
    assert "_lpfast_plan" not in loaded.emb.__dict__  # the plan is reported, not saved
    assert loaded(torch.randint(0, 300, (2, 5))).shape == (2, 10)


def test_compress_plot(tmp_path, capsys):
    torch, model = tiny_model()
    pytest.importorskip("matplotlib")
    src, dst, png = tmp_path / "in.pt", tmp_path / "out.pt", tmp_path / "auto.png"
    torch.save(model, src)
    code = main(["compress", str(src), str(dst), "--allow-pickle", "--quiet", "--plot", str(png),
                 "--plot-ratios", "3,6", "--rule", "emb=auto:4:candidates=svd",
                 "--rule", "body.2=auto:2:candidates=svd/lp:1.5"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("emb", "body.2"):
        path = tmp_path / f"auto-{name}.png"
        assert f"plot: {path}" in out and path.read_bytes()[:4] == b"\x89PNG"
    assert main(["compress", str(src), str(dst), "--allow-pickle", "--plot", str(png),
                 "--rule", "emb=lowrank:4"]) == 2
    assert "no --rule uses auto" in capsys.readouterr().err


def test_compress_calibration_table_and_frontier(tmp_path, capsys):
    torch, _ = tiny_model()
    pytest.importorskip("matplotlib")
    import lpfast.torch as lt

    model = Tiny(torch.float64)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 300, (4, 7), generator=g) for _ in range(3)]
    cal = lt.calibrate(model, batches, ["body.*"], progress=False)
    src, dst, cal_path, png = (tmp_path / n for n in ("in.pt", "out.pt", "cal.pt", "f.png"))
    torch.save(model, src)
    cal.save(cal_path)
    rules = ["body.0=auto:2:repeats=1,rows=2,sweep=4", "body.2=lowrank:2:p=2"]
    code = main(["compress", str(src), str(dst), "--allow-pickle", "--calibration", str(cal_path),
                 "--plot", str(png),
                 *(a for r in rules for a in ("--rule", r))])
    out = capsys.readouterr().out
    assert code == 0
    assert "(calibrated)" in out and "err_C" in out and "<- chosen" in out and "(sweep)" in out
    assert "body.0: auto (ratio 2; err_C: on the calibration inputs" in out
    assert f"plot: {png}" in out and png.read_bytes()[:4] == b"\x89PNG"
    loaded = lt.load_compressed(dst, Tiny(torch.float64))
    same = Tiny(torch.float64)
    lt.compress(same, {"body.2": "lowrank:2:p=2"}, calibration={"body.2": cal["body.2"]})
    assert torch.equal(loaded.body[2].dense_weight(), same.body[2].dense_weight())  # data-aware
    assert "_lpfast_selection" not in loaded.body[0].__dict__  # reported, not saved
    # errors: no such file, not a calibration, statistics of a layer no rule matches
    args = ["compress", str(src), str(tmp_path / "o.pt"), "--allow-pickle",
            "--rule", "body.2=lowrank:2:p=2"]
    assert main([*args, "--calibration", str(tmp_path / "none.pt")]) == 2
    assert "--calibration" in capsys.readouterr().err
    torch.save({"a": 1}, tmp_path / "bad.pt")
    assert main([*args, "--calibration", str(tmp_path / "bad.pt")]) == 2
    assert "not a saved lpfast calibration" in capsys.readouterr().err
    assert main([*args, "--calibration", str(cal_path)]) == 2
    assert "calibration['body.0']: no rule matches" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
    assert main([*args, "--calibration", str(cal_path), "--allow-unmatched"]) == 0
    # body.0's statistics ignored
    again = lt.load_compressed(tmp_path / "o.pt", Tiny(torch.float64))
    assert torch.equal(again.body[2].dense_weight(), same.body[2].dense_weight())


def test_compress_errors(tmp_path, capsys, monkeypatch):
    torch, model = tiny_model()
    src = tmp_path / "in.pt"
    torch.save(model.state_dict(), src)
    assert main(["compress", str(src), str(tmp_path / "o.pt"), "--rule", "emb=lowrank:2"]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err
    torch.save(model, src)
    out = str(tmp_path / "o.pt")
    assert main(["compress", str(src), out, "--rule", "emb=lowrank:2"]) == 2  # no consent
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "runs code" in err and str(src) in err
    assert main(["compress", str(src), out, "--allow-pickle", "--rule", "emb"]) == 2
    assert "--rule" in capsys.readouterr().err
    assert main(["compress", str(src), out, "--allow-pickle", "--rule", "zzz=lowrank:2"]) == 2
    assert "matches no" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["compress", str(src), out, "--allow-pickle", "--plot", str(tmp_path / "p.png"),
                 "--rule", "emb=auto:4"]) == 2  # checked before any fitting
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
