"""pytest configuration for the lpfast benchmarks (``bench/``).

* collects ``bench_*.py`` here even though the project's ``python_files`` says ``test_*.py``;
* runs the benchmarks case by case (all competitors of one group back to back), so that
  competitors of a group see the same machine load and only one case's dense W is alive;
* records the thread pools, lpfast's OpenMP build and the torch version in the
  ``--benchmark-json`` machine info, and prints them in the pytest header;
* times the benchmarks only when asked (``--benchmark-only``, ``--benchmark-enable``, or an
  option that saves or compares timings); otherwise, as in the project's test command
  ``python -m pytest``, each runs once as a test of its assertions (``--benchmark-disable``),
  and the ``benchmark`` fixture still times that run, so a benchmark that reads
  ``benchmark.stats`` works as a test too.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

HERE = Path(__file__).resolve().parent


# Options that ask for timings; without any of them the benchmarks run as tests.
_TIMING_OPTIONS = ("benchmark_only", "benchmark_enable", "benchmark_json", "benchmark_save",
                   "benchmark_autosave", "benchmark_compare", "benchmark_histogram")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark reads its options (tryfirst), so the default is a test
    # run: timing all of bench/ takes far longer than checking it.
    if not any(getattr(config.option, name, None) for name in _TIMING_OPTIONS):
        config.option.benchmark_disable = True


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    # Files named on the command line are collected by pytest itself; only add the ones it
    # would skip when given the directory.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and file_path.parent == HERE and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order benchmark items by (case, competitor); other items keep their place."""
    keyed = [(i, item) for i, item in enumerate(items)
             if getattr(item, "callspec", None) is not None and "case" in item.callspec.params
             and getattr(item.module, "COMPETITORS", None) is not None]
    if not keyed:
        return
    slots = [i for i, _ in keyed]

    def key(pair):
        _, item = pair
        case = item.callspec.params["case"]
        order = item.module.COMPETITORS
        name = item.originalname
        return (case.order, order.index(name) if name in order else len(order))

    for slot, (_, item) in zip(slots, sorted(keyed, key=key)):
        items[slot] = item


class _TimedOnce(BenchmarkFixture):
    """pytest-benchmark's disabled fixture runs the function once and leaves ``stats`` None;
    this one also times that run and reports it as ``stats.stats`` (mean = min = max)."""

    def _timed(self, run, *args, **kwargs):
        t0 = time.perf_counter()
        result = run(*args, **kwargs)
        t = time.perf_counter() - t0
        self.stats = SimpleNamespace(stats=SimpleNamespace(mean=t, min=t, max=t, median=t,
                                                           rounds=1))
        return result

    def __call__(self, function_to_benchmark, *args, **kwargs):
        return self._timed(super().__call__, function_to_benchmark, *args, **kwargs)

    def pedantic(self, target, *args, **kwargs):
        return self._timed(super().pedantic, target, *args, **kwargs)


@pytest.fixture
def benchmark(benchmark):  # noqa: F811 - pytest-benchmark's fixture, timed when disabled
    if benchmark.disabled:
        benchmark.__class__ = _TimedOnce  # the plugin requires a BenchmarkFixture instance
    return benchmark


def _runtime_info() -> dict[str, object]:
    import numpy as np
    import scipy

    import lpfast

    info: dict[str, object] = {
        "lpfast": lpfast.__version__,
        "lpfast_openmp": lpfast.has_openmp(),
        "lpfast_default_threads": lpfast.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                   "num_threads", "architecture")}
            for p in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = None
    return info


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = _runtime_info()
    pools = info["threadpools"]
    pools_txt = ("threadpoolctl not installed: NumPy's BLAS keeps its default thread count"
                 if pools is None else
                 ", ".join(f"{p['internal_api']}({p['prefix']})" for p in pools))
    return [f"lpfast {info['lpfast']} (OpenMP: {info['lpfast_openmp']}), numpy {info['numpy']}, "
            f"scipy {info['scipy']}, torch {info['torch']}",
            f"thread pools: {pools_txt}"]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["lpfast_bench"] = _runtime_info()
