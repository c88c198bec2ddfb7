"""Shared by every test module: the float dtypes every kernel runs in, and fixtures.

Test modules import ``DTYPES`` (``from conftest import DTYPES``: pytest puts tests/ on the
path); the fixtures apply by name, ``default_threads`` to every test.
"""

from __future__ import annotations

import numpy as np
import pytest

import lpfast

#: Every kernel exists for float32 and float64 (DESIGN.md); tests parametrize over both.
DTYPES = (np.float32, np.float64)


@pytest.fixture(autouse=True)
def default_threads():
    """Every test starts and ends with the default thread setting, whatever it changed."""
    lpfast.set_num_threads(None)
    yield
    lpfast.set_num_threads(None)
