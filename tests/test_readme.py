"""The README's NumPy quickstart and planner snippet run as written (so they cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_numpy_quickstart_and_planner_snippet_run():
    blocks = _python_blocks()
    numpy_quickstart = next(b for b in blocks if "lpfast.lp_subspace(" in b)
    planner = next(b for b in blocks if "plan_compression(" in b)
    ns: dict = {"counts": 1e5 / np.arange(1, 5001)}  # the planner snippet's token counts
    exec(compile(numpy_quickstart + "\n" + planner, str(README), "exec"), ns)
    assert ns["U"].shape == (5000, 32) and ns["Vt"].shape == (32, 256)
    assert np.isclose(ns["w"].sum(), np.linalg.matrix_rank(ns["E"].astype(np.float64)), rtol=1e-3)
    assert ns["op2"].nnz == ns["op"].nnz and ns["y"].shape == (32, 4096)
    assert ns["plan"].best is not None


def test_doping_train_then_serve_snippet_runs():
    """The README's "train with doping, then serve" example: annealing reaches its density
    and the served step equals the trained LSTM's own step."""
    import pytest

    torch = pytest.importorskip("torch")
    import lpfast

    block = next(b for b in _python_blocks() if "SparsityAnnealer(" in b and "runtime()" in b)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 5000, (35, 20), generator=g),
                torch.randint(0, 5000, (35, 20), generator=g)) for _ in range(2)]
    ns: dict = {"batches": batches, "token": 7}
    torch.manual_seed(0)
    exec(compile(block, str(README), "exec"), ns)
    lstm = ns["lstm"]
    assert abs(lstm.density - 0.06) < 1e-3
    with torch.no_grad():
        want, _ = lstm.eval()(ns["emb"].weight[[7]][None])
    np.testing.assert_allclose(ns["y"], want[0].numpy(), rtol=1e-4, atol=1e-5)


def test_api_table_lists_every_public_name():
    """The README's API table and the two ``__all__`` lists name the same things."""
    import re

    import pytest

    import lpfast

    lt = pytest.importorskip("lpfast.torch")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## API", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(lpfast(?:\.torch)?\.\w+)` \|", section, flags=re.M))
    public = {f"lpfast.{n}" for n in lpfast.__all__} | {f"lpfast.torch.{n}" for n in lt.__all__}
    assert listed == public
