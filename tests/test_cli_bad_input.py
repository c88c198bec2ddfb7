"""The command line on bad input (issue 18, items 1 and 9): each case must exit with code
2 and a one-line ``error: ...`` naming the file or argument, never a traceback; files to be
written are checked before any work runs; a crafted pickle runs no code without
``--allow-pickle``. The pickle cases and one of each kind run ``python -m lpfast`` in its
own process; the rest call ``main`` in this one (an escaping exception fails the test as a
traceback would), which saves a torch import per case.

Layout:
  pickles        a file whose unpickling creates a file: refused, nothing created
  inputs         compress/plan on missing, directory, truncated, garbage, .npy, huge-header
                 inputs, and calibrations that are not
  arguments      --threads -2, demo --density 2
  outputs        OUT.pt, --report-json, --plot, --json into a missing directory: refused
                 before loading or fitting
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lpfast
from lpfast.__main__ import main

torch = pytest.importorskip("torch")

from _torch_helpers import Tiny  # noqa: E402

TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(lpfast.__file__).resolve().parents[1]), str(TESTS)]))


def spawn(*argv: str) -> subprocess.CompletedProcess:
    """``python -m lpfast ARGV`` in its own process."""
    return subprocess.run([sys.executable, "-m", "lpfast", *argv], capture_output=True,
                          text=True, env=ENV, timeout=300)


@pytest.fixture
def run(capsys):
    """``main(ARGV)`` in this process, as a CompletedProcess (returncode, stdout, stderr)."""
    def call(*argv: str) -> subprocess.CompletedProcess:
        code = main(list(argv))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    return call


def assert_refused(res: subprocess.CompletedProcess, *names: str) -> str:
    """Exit code 2, stderr one line ``error: ...`` naming every one of ``names``."""
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), res.stderr
    for name in names:
        assert name in err, (name, err)
    return err


class OpensAFile:
    """Unpickling it calls ``open(marker, "w")``: creates the file ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli_bad")
    model = d / "model.pt"
    torch.save(Tiny(), model)
    raw = model.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.pt").write_bytes(b"this is not a torch file\n" * 20)
    np.save(d / "array.npy", np.ones((30, 8)))
    np.save(d / "E.npy", np.random.default_rng(0).standard_normal((60, 8)))
    (d / "truncated.npy").write_bytes((d / "array.npy").read_bytes()[:200])
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage" * 10)
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 garbage" * 10)
    with open(d / "huge.npy", "wb") as f:  # the header claims 800000 x 1000000 doubles: 5.8 TiB
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (800_000, 1_000_000)})
        f.write(b"\0" * 64)
    with zipfile.ZipFile(d / "huge_member.npz", "w") as z, z.open("a.npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (800_000, 1_000_000)})
    (d / "folder.pt").mkdir()
    torch.save(OpensAFile(str(d / "executed")), d / "evil.pt")
    torch.save({"a": torch.ones(2)}, d / "not_cal.pt")
    return {p.name: p for p in d.iterdir()} | {"dir": d}


# -- pickles -----------------------------------------------------------------------------------

def test_a_crafted_pickle_runs_no_code_without_allow_pickle(files, run):
    evil, marker = files["evil.pt"], files["dir"] / "executed"
    err = assert_refused(spawn("compress", str(evil), str(files["dir"] / "o.pt"),
                             "--rule", "emb=lowrank:2"), str(evil), "--allow-pickle")
    assert "runs code" in err
    assert not marker.exists()
    # the same for plan's torch inputs and compress's calibration
    assert_refused(run("plan", str(evil), "--ratio", "4"), str(evil))
    assert_refused(run("compress", str(files["model.pt"]), str(files["dir"] / "o.pt"),
                       "--allow-pickle", "--calibration", str(evil), "--rule", "emb=lowrank:2"),
                   "--calibration", str(evil))
    assert not marker.exists()
    # the flag is the explicit consent: then the file is unpickled (and runs its code)
    run("compress", str(evil), str(files["dir"] / "o.pt"), "--allow-pickle",
        "--rule", "emb=lowrank:2")
    assert marker.exists()
    marker.unlink()


def test_help_explains_allow_pickle():
    out = spawn("compress", "--help").stdout
    assert "--allow-pickle" in out and "runs code" in " ".join(out.split())
    assert "load_compressed" in " ".join(out.split())


# -- inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["missing.pt", "folder.pt", "truncated.pt", "garbage.pt",
                                  "array.npy", "not_cal.pt"])
def test_compress_input_that_is_no_model(files, name, run):
    path = str(files["dir"] / name)
    res = (spawn if name == "truncated.pt" else run)(
        "compress", path, str(files["dir"] / "o.pt"), "--rule", "emb=lowrank:2")
    assert_refused(res, path)
    assert not (files["dir"] / "o.pt").exists()


@pytest.mark.parametrize("name", ["truncated.pt", "garbage.pt", "array.npy"])
def test_compress_input_that_is_no_model_even_with_allow_pickle(files, name, run):
    path = str(files["dir"] / name)
    assert_refused(run("compress", path, str(files["dir"] / "o.pt"), "--allow-pickle",
                       "--rule", "emb=lowrank:2"), path)


@pytest.mark.parametrize("name", ["garbage.pt", "model.pt", "not_cal.pt", "folder.pt",
                                  "missing.pt", "array.npy"])
def test_calibration_that_is_no_calibration(files, name, run):
    cal = str(files["dir"] / name)
    assert_refused(run("compress", str(files["model.pt"]), str(files["dir"] / "o.pt"),
                       "--allow-pickle", "--calibration", cal, "--rule", "body.0=lowrank:2"),
                   "--calibration", cal)


@pytest.mark.parametrize("name", ["truncated.npy", "garbage.npy", "garbage.npz", "huge.npy",
                                  "huge_member.npz", "folder.pt", "truncated.pt", "garbage.pt"])
def test_plan_input_that_is_no_matrix(files, name, run):
    path = str(files["dir"] / name)
    err = assert_refused((spawn if name == "huge.npy" else run)("plan", path, "--ratio", "4"), path)
    if name.startswith("huge"):  # refused from the header, before any allocation
        assert "(800000, 1000000)" in err and "truncated or corrupt" in err


# -- arguments ---------------------------------------------------------------------------------

def test_threads_and_density_out_of_range(files, run):
    assert_refused(run("compress", str(files["model.pt"]), str(files["dir"] / "o.pt"),
                       "--allow-pickle", "--threads", "-2", "--rule", "emb=lowrank:2"),
                   "--threads", "-2")
    assert_refused(run("plan", str(files["E.npy"]), "--ratio", "4", "--threads", "-2"),
                   "--threads")
    for density in ("2", "-0.5", "nan"):
        assert_refused(run("demo", "--density", density), "--density")
    assert_refused(run("demo", "--seed", "-1"), "--seed")


# -- outputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["OUT.pt", "--report-json", "--plot"])
def test_compress_outputs_checked_before_the_work(files, option, run):
    if option == "--plot":
        pytest.importorskip("matplotlib")
    nowhere = str(files["dir"] / "no_such_dir" / "x")
    out = nowhere if option == "OUT.pt" else str(files["dir"] / "o.pt")
    extra = [] if option == "OUT.pt" else [option, nowhere]
    res = (spawn if option == "OUT.pt" else run)(
        "compress", str(files["model.pt"]), out, "--allow-pickle", *extra,
        "--rule", "emb=auto:4:candidates=svd")
    assert_refused(res, option, nowhere)
    assert "loading" not in res.stdout and "[1/1]" not in res.stdout  # nothing read, nothing fit
    assert not (files["dir"] / "o.pt").exists()


def test_compress_output_that_is_a_directory(files, run):
    folder = str(files["folder.pt"])
    assert_refused(run("compress", str(files["model.pt"]), folder, "--allow-pickle",
                       "--rule", "emb=lowrank:2"), "OUT.pt", folder)


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_plan_outputs_checked_before_the_work(files, option, run):
    if option == "--plot":
        pytest.importorskip("matplotlib")
    nowhere = str(files["dir"] / "no_such_dir" / "x")
    res = run("plan", str(files["E.npy"]), "--ratio", "4", option, nowhere)
    assert_refused(res, option, nowhere)
    assert "planning" not in res.stdout
