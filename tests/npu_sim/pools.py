"""Constants and types the npu_sim tests share (conftest.py holds the fixtures).

Tests import these from here, not from conftest: "conftest" is one module name for the
whole run, bound to whichever conftest.py pytest loaded last.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK_SIZE = 16

PoolFactory = Callable[..., np.ndarray]
