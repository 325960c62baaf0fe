"""Constants, types and pool helpers the npu_sim tests share (conftest.py holds the
fixtures).

Tests import these from here, not from conftest: "conftest" is one module name for the
whole run, bound to whichever conftest.py pytest loaded last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import npu_sim.wide_context as wide_context
from npu_sim.kv_pool import KVBlockPool, pool_bytes
from npu_sim.model import Model
from npu_sim.model_config import ModelConfig

BLOCK_SIZE = 16

Pool = KVBlockPool | np.ndarray
"""A KV pool as the model takes it: a counted pool or a bare array."""

PoolFactory = Callable[..., np.ndarray]
KVPoolFactory = Callable[..., Pool]


@dataclass(frozen=True, slots=True)
class PoolKind:
    """How a test hands the model its KV pool.

    `array`: a bare numpy array, which the model widens from scratch every step.
    `counted`: a `KVBlockPool` (write generations), whose decode contexts the model keeps
    widened across steps (`npu_sim.wide_context`, the path the server takes), with
    `verify_wide_context` on: every kept context is compared with a widening from
    scratch and any difference raises.
    """

    name: str

    @property
    def is_counted(self) -> bool:
        return self.name == "counted"

    def model(self, config: ModelConfig, **kwargs: Any) -> Model:
        """A model of `config` for this kind (verifying kept contexts if counted)."""
        return Model(config, verify_wide_context=self.is_counted, **kwargs)

    def new_pool(
        self, model: Model, num_blocks: int = 64, block_size: int = BLOCK_SIZE, fill: float = 0.0
    ) -> Pool:
        """A pool for `model` with every element `fill` (NaN shows reads of unwritten
        slots)."""
        shape = model.kv_pool_shape(num_blocks, block_size)
        dtype = np.dtype(model.config.kv_dtype)
        if not self.is_counted:
            return np.full(shape, fill, dtype=dtype)
        pool = KVBlockPool(shape, dtype)
        if fill != 0.0:
            pool.write_blocks(np.arange(num_blocks), np.full(shape, fill, dtype=dtype))
        return pool

    def check_kept(self, model: Model) -> None:
        """On a counted pool, the model really kept (and so verified) decode contexts."""
        if self.is_counted:
            assert model._wide.num_bytes > 0  # noqa: SLF001 - no public counter to ask


POOL_KINDS = (PoolKind("array"), PoolKind("counted"))


def put_blocks(pool: Pool, blocks: Sequence[int], values: np.ndarray) -> None:
    """Write whole blocks as a reload does (through the owner of a counted pool)."""
    if isinstance(pool, np.ndarray):
        pool[list(blocks)] = values
    else:
        pool.write_blocks(np.asarray(blocks, dtype=np.int64), values)


__all__ = [
    "BLOCK_SIZE",
    "POOL_KINDS",
    "KVPoolFactory",
    "Pool",
    "PoolFactory",
    "PoolKind",
    "pool_bytes",
    "put_blocks",
]


def count_widened_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the number of blocks each `WideContext.gather` widening takes from the
    pool (K and V counted apart, every layer; a patch of single tokens is not counted)."""
    real_widen = wide_context.widen
    widened: list[int] = []

    def counting(x: np.ndarray, *args: object) -> np.ndarray:
        if x.ndim == 4:  # K or V of whole blocks (n, block_size, kvh, hd)
            widened.append(x.shape[0])
        return real_widen(x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(wide_context, "widen", counting)
    return widened
