"""The BLAS thread knob works and does not change any bit."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.blas import blas_core_name, blas_threads, blas_threads_limited, limit_blas_threads
from npu_sim.model import Model
from npu_sim.model_config import ModelConfig
from npu_sim.ops import pad_rows, tiled_matmul


def test_thread_count_does_not_change_results() -> None:
    original = blas_threads()
    if original is None or not limit_blas_threads(original):
        pytest.skip("numpy is not linked against a recognisable OpenBLAS")
    rng = np.random.default_rng(3)
    x = pad_rows(rng.standard_normal((300, 512), dtype=np.float32))
    w = rng.standard_normal((512, 1536), dtype=np.float32)
    try:
        limit_blas_threads(2)
        two = tiled_matmul(x, w)
        plain_two = x @ w
        limit_blas_threads(1)
        assert blas_threads() == 1
        assert tiled_matmul(x, w).tobytes() == two.tobytes()
        assert (x @ w).tobytes() == plain_two.tobytes()
    finally:
        limit_blas_threads(original)
    assert isinstance(blas_core_name(), str)


def test_invalid_thread_count() -> None:
    with pytest.raises(ValueError):
        limit_blas_threads(0)


def test_scoped_limit_restores_and_model_validates(tiny_config: ModelConfig) -> None:
    original = blas_threads()
    if original is None:
        pytest.skip("numpy is not linked against a recognisable OpenBLAS")
    target = 2 if original == 1 else 1  # a count that differs from the current one
    with blas_threads_limited(target):
        assert blas_threads() == target
    assert blas_threads() == original
    with blas_threads_limited(None):
        assert blas_threads() == original
    assert blas_threads() == original
    with pytest.raises(ValueError):
        Model(tiny_config, blas_threads=0)
