"""Constants shared by the test modules (``from shared import DTYPES``).

They live here, not in conftest.py, because ``python -m pytest`` also collects bench/, whose
conftest.py is imported under the same module name ``conftest``: ``from conftest import``
would then find whichever was loaded last.
"""

from __future__ import annotations

import numpy as np

#: Every kernel exists for float32 and float64 (DESIGN.md); tests parametrize over both.
DTYPES = (np.float32, np.float64)
