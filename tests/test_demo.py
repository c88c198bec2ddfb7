"""The main job (``python -m lpfast``): its robust-fit and planner sections say what the
README promises (the doped Kronecker section is exercised by the kron tests and benches)."""

from __future__ import annotations

import re

import lpfast.__main__ as cli


def test_robust_section_shows_l1_recovering_the_subspace_svd_misses(capsys):
    cli._demo_robust(seed=0)
    out = capsys.readouterr().out
    angles = {name: float(a) for name, a in
              re.findall(r"^(SVD \(p=2\)|l1 IRLS ?): largest angle to the planted subspace +"
                         r"([0-9.]+) deg", out, flags=re.M)}
    assert set(angles) == {"SVD (p=2)", "l1 IRLS "}, out
    assert angles["l1 IRLS "] < 1.0 < 5.0 < angles["SVD (p=2)"]


def test_planner_section_prints_a_ranked_table(capsys):
    cli._demo_planner(seed=0)
    out = capsys.readouterr().out
    rows = re.findall(r"^ *(\d+)  (\S+) .* (\d\.\d+) +\S+ +\S+$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 10
    errors = [float(r[2]) for r in rows]
    assert errors == sorted(errors)
    assert "+doped" in rows[0][1]  # usage-weighted doping wins on this vocabulary
