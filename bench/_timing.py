"""Whether this pytest run times the benchmarks, known before any ``bench_*.py`` is imported.

``conftest.py`` sets ``TIMED`` in ``pytest_configure`` (an initial conftest: bench/ is in
the project's testpaths), so a benchmark module can choose its sizes at import: the timed
case when timings are asked for, else a small one that checks the same assertions (the
test run of ``python -m pytest``, which CI runs). bench_planner.py chooses per test through
``benchmark.enabled`` instead; this serves modules whose sizes sit in module constants and
cached tables shared with other modules.
"""

from __future__ import annotations

#: True unless benchmarks are disabled (set by conftest.py; True outside pytest).
TIMED = True


def size(timed: int, check: int) -> int:
    """``timed`` when this run times the benchmarks, else the small ``check``."""
    return timed if TIMED else check
