"""Shape of the KV cache as the cache manager sees it.

The cache package does not know the model; the server builds a `KVLayout` from the model
config and hands it in. One block is `[num_layers, 2, block_size, num_kv_heads, head_dim]`
(axis 1: K=0, V=1), contiguous in memory, so spilling or reloading a block is one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bump when the meaning of stored block bytes changes (axis order, dtype rules, ...):
# it is part of every block hash and every Redis/LMDB namespace, so old blocks are never
# read back with a new interpretation.
LAYOUT_VERSION = 1


@dataclass(frozen=True, slots=True)
class KVLayout:
    """KV-cache geometry shared by the HBM pool and the lower tiers."""

    model_id: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: str = "float16"
    version: int = LAYOUT_VERSION

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def block_bytes(self) -> int:
        """Raw KV bytes of one block (without the storage header)."""
        n = 1
        for d in self.block_shape:
            n *= d
        return n * self.np_dtype.itemsize

    @property
    def namespace(self) -> str:
        """Key namespace in the lower tiers: one per model and layout version."""
        return f"tierkv.{self.model_id}.v{self.version}"
