"""A KV pool whose every write is counted: read-only bytes plus a write generation.

The model keeps decode contexts widened across steps (`npu_sim.wide_context`). A widened
block is valid while nobody wrote the block since; checking that by comparing bytes cost
a fifth of a batch-32 decode step. A write counter is cheaper, but one missed bump by any
writer would mean wrong tokens. So a stray write raises: the pool's owner keeps the
only writable array privately and hands everyone else read-only views, built on a
read-only buffer (`kv.flags.writeable` is False and cannot be set back), so a write that
does not go through the owner's write methods fails instead of silently changing bytes.
(Python cannot hide the owner's array from code that digs for it on purpose, through
the buffer's `.obj`; no code here does.) Every write method bumps
`generation[block, layer]` *after* the bytes are written.

`KVPool` is the protocol the model and the executor use (`cache.hbm_pool.HbmBlockPool`
implements it too: `npu_sim` and `cache` do not import each other). `KVBlockPool` is a
plain owner for benchmarks and tests. A bare `np.ndarray` is still accepted everywhere a
pool is: the model then trusts no cached widening and widens every step.

Threading: writes to different blocks may come from different threads (transfer lanes
while the engine steps); generations are bumped under a lock. A reader that recorded a
block's generation before reading its bytes sees a different generation afterwards if
anyone wrote the block in between, provided writers bump after writing (they do).
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class KVPool(Protocol):
    """A KV pool `[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]` that
    counts writes (see the module doc)."""

    @property
    def kv(self) -> np.ndarray:
        """Read-only view of the pool's bytes."""
        ...

    @property
    def generation(self) -> np.ndarray:
        """Read-only int64 `(num_blocks, num_layers)`: bumped after every write to the
        block's layer. Never decreases. The same array object on every call: a model's
        kept contexts start over when it changes (another pool)."""
        ...

    def write_tokens(
        self, blocks: np.ndarray, offsets: np.ndarray, layer: int | None, values: np.ndarray
    ) -> None:
        """`kv[blocks, layer, :, offsets] = values` (`layer` None: every layer, values
        `(n, num_layers, 2, kvh, hd)`; else `(n, 2, kvh, hd)`), then bump the blocks'
        generations."""
        ...


class KVBlockPool:
    """Owner of a zeroed KV pool of `shape` and `dtype` (see `KVPool`)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | str | type) -> None:
        self._kv = np.zeros(shape, dtype=dtype)
        self._generation = np.zeros(shape[:2], dtype=np.int64)
        self._lock = threading.Lock()
        self._kv_view = read_only(self._kv)
        self._generation_view = read_only(self._generation)

    @property
    def kv(self) -> np.ndarray:
        return self._kv_view

    @property
    def generation(self) -> np.ndarray:
        return self._generation_view

    def write_tokens(
        self, blocks: np.ndarray, offsets: np.ndarray, layer: int | None, values: np.ndarray
    ) -> None:
        assign_tokens(self._kv, blocks, offsets, layer, values)
        self._bump(blocks, layer)

    def write_blocks(self, blocks: np.ndarray, values: np.ndarray) -> None:
        """`kv[blocks] = values` (whole blocks, every layer), then bump."""
        self._kv[blocks] = values
        self._bump(blocks, None)

    def _bump(self, blocks: np.ndarray, layer: int | None) -> None:
        """Count a write to `blocks` (one layer, or all): call after writing the bytes."""
        with self._lock:
            if layer is None:
                self._generation[blocks] += 1
            else:
                self._generation[blocks, layer] += 1


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of C-contiguous `array` that raises on any write through it. Built on a
    read-only buffer, so a reader cannot set `flags.writeable` back (a plain view's can
    be, its base being writable)."""
    buffer = array.data.cast("B").toreadonly()
    return np.frombuffer(buffer, dtype=array.dtype).reshape(array.shape)


def pool_bytes(pool: KVPool | np.ndarray) -> np.ndarray:
    """The array to read a pool's bytes from (the pool itself if it is an array)."""
    return pool if isinstance(pool, np.ndarray) else pool.kv


def write_tokens(
    pool: KVPool | np.ndarray,
    blocks: np.ndarray,
    offsets: np.ndarray,
    layer: int | None,
    values: np.ndarray,
) -> None:
    """`KVPool.write_tokens` for a counted pool or a bare array."""
    if isinstance(pool, np.ndarray):
        assign_tokens(pool, blocks, offsets, layer, values)
    else:
        pool.write_tokens(blocks, offsets, layer, values)


def assign_tokens(
    kv: np.ndarray, blocks: np.ndarray, offsets: np.ndarray, layer: int | None, values: np.ndarray
) -> None:
    """`kv[blocks, layer, :, offsets] = values` (`layer` None: every layer); no counting."""
    if layer is None:
        kv[blocks, :, :, offsets] = values
    else:
        kv[blocks, layer, :, offsets] = values


__all__ = ["KVBlockPool", "KVPool", "assign_tokens", "pool_bytes", "read_only", "write_tokens"]
