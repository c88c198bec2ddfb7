"""The torch tests: the whole folder skips, once, where torch is not installed."""

import pytest

pytest.importorskip("torch")
