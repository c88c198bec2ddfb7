"""The C++ core on its own (cpp/tests, no Python, no pybind11): configured, built and run
through ctest, so that `python -m pytest` (the README's test command, and CI's) also proves
the headers stand alone as DESIGN.md promises. Eigen comes from the `test` extra's
cmeel-eigen (or a system Eigen)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None,
                    reason="cmake/ctest not on PATH")
def test_cpp_core_ctest(tmp_path):
    if not (ROOT / "cpp" / "tests" / "CMakeLists.txt").exists():
        pytest.skip("not a source checkout (installed package)")
    build = tmp_path / "cpp-tests"
    run(["cmake", "-S", "cpp/tests", "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython_EXECUTABLE={sys.executable}"])
    run(["cmake", "--build", str(build), "-j2"])
    run(["ctest", "--test-dir", str(build), "--output-on-failure"])
