"""The torch tests: where torch is not installed the folder is skipped, once, as a whole.

Not ``pytest.importorskip`` here: in a conftest that pytest loads first (``pytest tests/torch``)
a skip aborts the whole run instead of skipping.
"""

try:
    import torch  # noqa: F401
except ImportError:
    collect_ignore_glob = ["*.py"]

    def pytest_terminal_summary(terminalreporter):
        terminalreporter.write_line("SKIPPED tests/torch/: torch is not installed")
