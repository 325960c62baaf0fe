"""Decode contexts widened once and kept across steps, checked against the pool's bytes.

A decode step attends over each sequence's whole context, so without a cache every step
widens every layer's K (to float32) and V (to float64) from the pool again: at batch 32
and 1k context that was most of a step. `WideContext` keeps, per layer, a slab of rows
(one per running sequence) holding the pool bytes last widened for each block column and
their widened values. Each step it gathers the pool's bytes, compares them bit for bit
with the copy (cheap: an integer compare) and re-widens only the blocks that differ
(usually the last, partly filled block of each sequence).

Why content and not a write counter: the cache manager writes HBM slots behind the
model's back (reloads on transfer threads), so only the bytes say what a slot holds. A
block whose bytes equal the copy's widens to the same values, so the attention inputs,
and so the result bits, are exactly those of widening from scratch.

Bounded: the slabs of all layers together hold at most `max_bytes`; a sequence or a
context that does not fit is widened per step as without the cache. Per context token
and layer a row costs `num_kv_heads * head_dim * (2 * pool itemsize + 4 + 8)` bytes
(the pool bytes of K and V, K as float32, V as float64).

Not thread-safe: used from `Model.forward` only (one thread at a time).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from npu_sim.ops import widen


@dataclass(slots=True)
class _Slab:
    """One layer's rows: pool bytes (K, V) per block column and their widened values."""

    raw: np.ndarray  # (rows, blocks, 2, block_size, kvh, hd) pool dtype: K and V
    k_wide: np.ndarray  # float32 (rows, kvh, hd, blocks, block_size): keys transposed
    v_wide: np.ndarray  # float64 (rows, kvh, blocks, block_size, hd): one (T, hd) per head


class WideContext:
    """Widened K/V of running decode sequences, one slab per layer (see module doc)."""

    def __init__(self, num_layers: int, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._num_layers = num_layers
        self._max_bytes = max_bytes
        self._slabs: list[_Slab | None] = [None] * num_layers
        self._rows: dict[Hashable, int] = {}  # sequence key -> row
        self._last_used: list[int] = []  # per row: the step that last used it
        self._step = 0

    @property
    def num_bytes(self) -> int:
        """Bytes the slabs hold now (all layers)."""
        return sum(
            a.nbytes for s in self._slabs if s is not None for a in (s.raw, s.k_wide, s.v_wide)
        )

    def assign_rows(
        self, keys: Sequence[Hashable], num_blocks: int, kv_pool: np.ndarray
    ) -> list[int | None]:
        """A slab row for each sequence key of this step (None: it does not fit).

        Keys seen before keep their row; new keys take a row no key of this step uses,
        the least recently used first. Rows and block columns grow (within `max_bytes`)
        to `len(keys)` rows of `num_blocks` blocks.
        """
        self._step += 1
        self._fit(len(keys), num_blocks, kv_pool)
        if self.num_block_columns() < num_blocks:  # not even one row of that length fits
            return [None] * len(keys)
        rows: list[int | None] = [self._rows.get(key) for key in keys]
        for row in rows:
            if row is not None:
                self._last_used[row] = self._step
        free = sorted(
            (r for r in range(len(self._last_used)) if self._last_used[r] != self._step),
            key=lambda r: (self._last_used[r], r),  # pop(): least recent, then lowest
            reverse=True,
        )
        for i, key in enumerate(keys):
            if rows[i] is None and free:
                row = free.pop()
                self._rows = {k: r for k, r in self._rows.items() if r != row}
                self._rows[key] = row
                self._last_used[row] = self._step
                rows[i] = row
        return rows

    def num_block_columns(self) -> int:
        slab = self._slabs[0]
        return 0 if slab is None else slab.raw.shape[1]

    def gather(
        self,
        kv_pool: np.ndarray,
        layer_idx: int,
        first_row: int,
        table: np.ndarray,
        ctx: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows [first_row, first_row + len(ctx)) as K (B, kvh, hd, T) float32 and V
        (B, kvh, T, hd) float64, like `model._gather` (V zero past each context).

        table: (B, nb) pool block ids, nb <= `num_block_columns()`, padded with any
        valid id; ctx: each sequence's context length (tokens).
        """
        slab = self._slabs[layer_idx]
        assert slab is not None
        bsz, nb = table.shape
        rows = slice(first_row, first_row + bsz)
        both = kv_pool[table, layer_idx]  # (B, nb, 2, bs, kvh, hd): one gathering pass
        bs = both.shape[3]
        for b, n in enumerate(ctx):  # positions past the context: V must be exactly 0
            if n % bs:
                both[b, n // bs, 1, n % bs :] = 0
            both[b, -(-n // bs) :, 1] = 0
        b_idx, j_idx = np.nonzero(_differs(both, slab.raw[rows, :nb]))
        if b_idx.size:
            fresh = both[b_idx, j_idx]  # (n, 2, bs, kvh, hd)
            slab.raw[b_idx + first_row, j_idx] = fresh
            # K stored transposed: BLAS multiplies by a row-major (hd, T) faster (NN).
            k_wide = widen(fresh[:, 0]).transpose(0, 2, 3, 1)
            slab.k_wide[b_idx + first_row, :, :, j_idx] = k_wide
            v_wide = widen(fresh[:, 1], np.float64).transpose(0, 2, 1, 3)
            slab.v_wide[b_idx + first_row, :, j_idx] = v_wide
        kvh, hd = both.shape[4], both.shape[5]
        k_t = slab.k_wide[rows, :, :, :nb].reshape(bsz, kvh, hd, nb * bs)
        v = slab.v_wide[rows, :, :nb].reshape(bsz, kvh, nb * bs, hd)
        return k_t, v

    def _fit(self, num_rows: int, num_blocks: int, kv_pool: np.ndarray) -> None:
        """Start over for a pool of another block shape or dtype, then `_grow`."""
        slab = self._slabs[0]
        if slab is not None and (
            slab.raw.dtype != kv_pool.dtype or slab.raw.shape[3:] != kv_pool.shape[3:]
        ):
            self._slabs = [None] * self._num_layers
            self._rows, self._last_used = {}, []
        self._grow(num_rows, num_blocks, kv_pool)

    def _grow(self, num_rows: int, num_blocks: int, kv_pool: np.ndarray) -> None:
        """Grow every layer's slab to cover the request, as far as `max_bytes` allows
        (columns first: rows that no longer fit are dropped and their sequences fall
        back)."""
        rows, cols = len(self._last_used), self.num_block_columns()
        if num_rows <= rows and num_blocks <= cols:
            return
        block_shape = kv_pool.shape[3:]
        per_cell = int(np.prod(block_shape)) * (2 * kv_pool.itemsize + 4 + 8) * self._num_layers
        # Columns grow 16 blocks at a time, also when the bound binds (rows give way),
        # so a full cache is not copied again for every block its contexts grow by; only
        # a single row that cannot take 16 more blocks gets the exact number.
        new_cols = max(cols, _round_up(num_blocks, 16))
        if new_cols * per_cell > self._max_bytes:
            new_cols = max(cols, num_blocks)
        new_rows = min(max(rows, num_rows), self._max_bytes // (new_cols * per_cell))
        if new_rows == 0 or (new_rows, new_cols) == (rows, cols):
            return
        keep_rows, keep_cols = min(rows, new_rows), min(cols, new_cols)
        bs, kvh, hd = block_shape
        for layer_idx in range(self._num_layers):
            old = self._slabs[layer_idx]
            slab = _Slab(
                raw=np.zeros((new_rows, new_cols, 2, *block_shape), dtype=kv_pool.dtype),
                k_wide=np.zeros((new_rows, kvh, hd, new_cols, bs), dtype=np.float32),
                v_wide=np.zeros((new_rows, kvh, new_cols, bs, hd), dtype=np.float64),
            )
            if old is not None:
                kept = (slice(keep_rows), slice(keep_cols))
                slab.raw[kept] = old.raw[kept]
                k_kept = (slice(keep_rows), slice(None), slice(None), slice(keep_cols))
                slab.k_wide[k_kept] = old.k_wide[k_kept]
                v_kept = (slice(keep_rows), slice(None), slice(keep_cols))
                slab.v_wide[v_kept] = old.v_wide[v_kept]
            self._slabs[layer_idx] = slab
        self._rows = {k: r for k, r in self._rows.items() if r < new_rows}
        self._last_used = self._last_used[:new_rows] + [0] * (new_rows - keep_rows)


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, nb) bool: whether block [b, j] of `a` and `b` (B, nb, ...) differ in any bit.

    Compares the widest unsigned words that tile a block (4 halves per uint64 compare:
    ~4x faster than comparing float16 elements, which numpy does not vectorise).
    """
    block_bytes = a[0, 0].nbytes if a.size else 1
    word = next(w for w in (8, 4, 2, 1) if block_bytes % w == 0)
    shape = (a.shape[0], a.shape[1], -1)
    as_int = np.dtype(f"u{word}")
    a_words = a.reshape(shape).view(np.uint8).view(as_int)
    b_words = b.reshape(shape).view(np.uint8).view(as_int)
    return np.asarray(np.not_equal(a_words, b_words).any(axis=-1))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
