"""The BLAS thread knob works and changes no bit of the model's results (on a bare array
pool and on a counted one, whose kept decode contexts are verified)."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.blas import blas_core_name, blas_threads, blas_threads_limited, limit_blas_threads
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from tests.npu_sim.pools import PoolKind, pool_bytes


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_count_does_not_change_logits_or_kv(
    tiny_config: ModelConfig, pool_kind: PoolKind, threads: int
) -> None:
    if blas_threads() is None:
        pytest.skip("numpy is not linked against a BLAS threadpoolctl recognises")
    rng = np.random.default_rng(threads)
    prompt = rng.integers(0, 256, 300).tolist()
    results = []
    for count in (1, threads):
        model = pool_kind.model(tiny_config, blas_threads=count)
        pool = pool_kind.new_pool(model, 24, 16)
        logits = model.forward([SeqChunk(prompt, 0, list(range(19)))], pool)
        # Three decodes: a counted pool's kept contexts are used (and verified) after
        # the first.
        decodes = [
            model.forward([SeqChunk([65 + i], 300 + i, list(range(19)))], pool).tobytes()
            for i in range(3)
        ]
        pool_kind.check_kept(model)
        results.append((logits.tobytes(), decodes, pool_bytes(pool).tobytes()))
    assert results[0] == results[1]
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
