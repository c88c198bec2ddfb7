"""Fixtures shared by every test module; shared constants (``DTYPES``) are in shared.py."""

from __future__ import annotations

import pytest

import lpfast


@pytest.fixture(autouse=True)
def default_threads():
    """Every test starts and ends with the default thread setting, whatever it changed."""
    lpfast.set_num_threads(None)
    yield
    lpfast.set_num_threads(None)
