"""Decode contexts widened once and kept across steps, valid while their write
generation holds.

A decode step attends over each sequence's whole context, so without a cache every step
widens every layer's K (to float32) and V (to float64) from the pool again: at batch 32
and 1k context that was most of a step. `WideContext` keeps, per layer, a slab of rows
(one per running sequence) holding the widened values of each block column, and for
each column the pool block it holds and that block's write generation when it was
widened (`npu_sim.kv_pool`: every write to a counted pool bumps
`generation[block, layer]` after writing; a stray write raises), and how many leading
offsets of the column it widened or patched. Each step it re-widens only the columns
whose block or generation differs from the table and the pool's, or whose context now
reaches past those offsets. The token the model itself just
wrote into a column it holds is copied in (`patch`) instead of re-widening the block,
when no other token of the step writes that block (`group_decodes` leaves those out).

Why this is exact: a column is used only if its block was not written since it was
widened (or since its last patch), and only up to the offsets it was widened or patched
for (a decode may come back to an earlier position and then go past it: the offsets in
between were zeroed as past the context, though the pool holds them), so its values
inside the context are those the pool's bytes widen to;
V past each context is finite (zeroed where pool bytes were widened, else a value the
model wrote), and its weights there are exactly 0. So the attention inputs, and so the
result bits, are exactly those of widening from scratch. (Before, every step compared
the pool's bytes with a kept copy: ~21% of a batch-32 step.) `verify` still compares
with a widening from scratch, for tests and debugging (`Model(verify_wide_context=True)`).

Bounded: the slabs of all layers together hold at most `max_bytes`; a sequence or a
context that does not fit is widened per step as without the cache. Per context token
and layer a row costs `num_kv_heads * head_dim * (4 + 8)` bytes (K as float32, V as
float64), plus 24 bytes per block column and layer for the records.

Not thread-safe: used from `Model.forward` only (one thread at a time).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from npu_sim.ops import widen


@dataclass(slots=True)
class _Slab:
    """One layer's rows: widened values per block column, and what they were widened from."""

    k_wide: np.ndarray  # float32 (rows, kvh, hd, blocks, block_size): keys transposed
    v_wide: np.ndarray  # float64 (rows, kvh, blocks, block_size, hd): one (T, hd) per head
    block: np.ndarray  # int64 (rows, blocks): pool block held (-1: none)
    generation: np.ndarray  # int64 (rows, blocks): its generation when widened
    valid: np.ndarray  # int64 (rows, blocks): leading offsets equal to the pool's bytes


class WideContext:
    """Widened K/V of running decode sequences, one slab per layer (see module doc)."""

    def __init__(self, num_layers: int, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._num_layers = num_layers
        self._max_bytes = max_bytes
        self._slabs: list[_Slab | None] = [None] * num_layers
        self._rows: dict[Hashable, int] = {}  # sequence key -> row
        # The generations of the pool the slabs were widened from (held: kept alive, so
        # another pool can never pass for it).
        self._source: np.ndarray | None = None
        self._last_used: list[int] = []  # per row: the step that last used it
        self._step = 0
        self._released: set[int] = set()  # rows of finished sequences (`release`)

    @property
    def num_bytes(self) -> int:
        """Bytes the slabs hold now (all layers)."""
        return sum(
            a.nbytes
            for s in self._slabs
            if s is not None
            for a in (s.k_wide, s.v_wide, s.block, s.generation, s.valid)
        )

    def assign_rows(
        self,
        keys: Sequence[Hashable],
        num_blocks: int,
        kv_pool: np.ndarray,
        generation: np.ndarray,
        tables: Sequence[np.ndarray] | None = None,
    ) -> list[int | None]:
        """A slab row for each sequence key of this step (None: it does not fit).

        Keys seen before keep their row; new keys take a row no key of this step uses:
        given `tables` (each key's context blocks), the released row (`release`: its
        sequence finished) holding the longest run of the sequence's leading blocks at
        their current generation, so a new request on a prefix its predecessor left in
        HBM (a conversation's next turn, the same prompt again) widens only what is new;
        else the least recently used released row; else the least recently used row (a
        live sequence's that sat out a step: it widens again when it comes back). Which
        row a key takes changes speed only: `gather` checks every column. Rows and
        block columns grow (within `max_bytes`) to `len(keys)` rows of `num_blocks`
        blocks. A pool other than last time's (another `generation` array) or of another
        block shape starts the cache over.
        """
        self._step += 1
        self._fit(len(keys), num_blocks, kv_pool, generation)
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
                released = [r for r in free if r in self._released]
                held = None
                if tables is not None and released:
                    held = self._holding_most(released, tables[i], generation)
                if held is None and released:
                    held = released[-1]  # a finished sequence's row before a live one's
                row = free.pop() if held is None else free.pop(free.index(held))
                self._released.discard(row)
                self._rows = {k: r for k, r in self._rows.items() if r != row}
                self._rows[key] = row
                self._last_used[row] = self._step
                rows[i] = row
        return rows

    def release(self, keys: Iterable[Hashable]) -> None:
        """These sequences finished: their rows keep what they hold, for `assign_rows`
        to hand to a new sequence on the same blocks. Unknown keys are ignored."""
        for key in keys:
            row = self._rows.pop(key, None)
            if row is not None:
                self._released.add(row)

    def _holding_most(
        self, candidates: list[int], table: np.ndarray, generation: np.ndarray
    ) -> int | None:
        """The row of `candidates` (least recently used last) whose leading columns hold
        the most of `table`'s leading blocks at their current generation (layer 0
        decides), None if none holds even the first; ties go to the least recently used."""
        slab = self._slabs[0]
        nb = min(len(table), self.num_block_columns())
        if slab is None or nb == 0 or not candidates:
            return None
        rows = np.array(candidates, dtype=np.int64)
        held = (slab.block[rows, :nb] == table[:nb]) & (
            slab.generation[rows, :nb] == generation[table[:nb], 0]
        )
        run = np.where(held.all(axis=1), nb, np.argmin(held, axis=1))  # leading matches
        if run.max() == 0:
            return None
        return candidates[len(candidates) - 1 - int(np.argmax(run[::-1]))]  # last longest

    def num_block_columns(self) -> int:
        slab = self._slabs[0]
        return 0 if slab is None else slab.block.shape[1]

    def patch(
        self,
        generation: np.ndarray,
        layer_idx: int,
        rows: np.ndarray,
        positions: np.ndarray,
        blocks: np.ndarray,
        before: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Copy in the tokens the model just wrote: for each i, `values[i]` (K and V,
        `(2, kvh, hd)` in the pool's dtype, the bytes written) at context position
        `positions[i]` of row `rows[i]`, in pool block `blocks[i]`, whose generation was
        `before[i]` just before that write (and no other write since). A column holding
        that block at that generation takes the token and the block's current
        generation; others are left for `gather` to re-widen."""
        slab = self._slabs[layer_idx]
        if slab is None or rows.size == 0:
            return
        bs = slab.k_wide.shape[4]
        cols, offsets = np.divmod(positions, bs)
        fits = cols < slab.block.shape[1]
        cols = np.minimum(cols, slab.block.shape[1] - 1)
        hit = fits & (slab.block[rows, cols] == blocks) & (slab.generation[rows, cols] == before)
        hit &= offsets <= slab.valid[rows, cols]  # else the offsets before it are unknown
        if not hit.all():
            rows, cols, offsets = rows[hit], cols[hit], offsets[hit]
            blocks, values = blocks[hit], values[hit]
        if rows.size == 0:
            return
        slab.k_wide[rows, :, :, cols, offsets] = widen(values[:, 0])
        slab.v_wide[rows, :, cols, offsets] = widen(values[:, 1], np.float64)
        slab.generation[rows, cols] = generation[blocks, layer_idx]
        slab.valid[rows, cols] = np.maximum(slab.valid[rows, cols], offsets + 1)

    def gather(
        self,
        kv_pool: np.ndarray,
        generation: np.ndarray,
        layer_idx: int,
        first_row: int,
        table: np.ndarray,
        ctx: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows [first_row, first_row + len(ctx)) as K (B, kvh, hd, T) float32 and V
        (B, kvh, T, hd) float64, like `model._gather`: the same values within each
        context; past it V is finite (0, or a token this row held before), which is all
        `attend` needs (its weights there are exactly 0).

        table: (B, nb) pool block ids, nb <= `num_block_columns()`, padded with any
        valid id; ctx: each sequence's context length (tokens); generation: the pool's
        `(num_blocks, num_layers)` write generations.
        """
        slab = self._slabs[layer_idx]
        assert slab is not None
        bsz, nb = table.shape
        bs = kv_pool.shape[3]
        rows = slice(first_row, first_row + bsz)
        used = -(-np.asarray(ctx, dtype=np.int64) // bs)
        in_ctx = np.arange(nb)[None, :] < used[:, None]
        # Read the generations before the bytes: a write in between shows next time.
        now = generation[table, layer_idx]
        stale = slab.block[rows, :nb] != table
        stale |= slab.generation[rows, :nb] != now
        # Offsets of each column inside its context: a column is trusted only that far.
        need = np.clip(np.asarray(ctx, dtype=np.int64)[:, None] - np.arange(nb) * bs, 0, bs)
        stale |= slab.valid[rows, :nb] < need
        stale &= in_ctx
        b_idx, j_idx = np.nonzero(stale)
        if b_idx.size:
            blocks = table[b_idx, j_idx]
            fresh = kv_pool[blocks, layer_idx]  # (n, 2, bs, kvh, hd)
            # Both widened before either is stored: a failure (MemoryError) leaves the
            # columns as they were, never K of one block under another's record.
            # K stored transposed: BLAS multiplies by a row-major (hd, T) faster (NN).
            k_wide = widen(fresh[:, 0]).transpose(0, 2, 3, 1)
            v_wide = widen(fresh[:, 1], np.float64).transpose(0, 2, 1, 3)
            slab.k_wide[b_idx + first_row, :, :, j_idx] = k_wide
            slab.v_wide[b_idx + first_row, :, j_idx] = v_wide
            slab.block[b_idx + first_row, j_idx] = blocks
            slab.generation[b_idx + first_row, j_idx] = now[b_idx, j_idx]
            slab.valid[b_idx + first_row, j_idx] = need[b_idx, j_idx]
        # Positions past the context: V must be exactly 0. A kept column is zero past the
        # context it was widened for and takes only tokens inside the context (`patch`),
        # so only a last column widened just now, and padding, need zeroing.
        for b, j in zip(b_idx.tolist(), j_idx.tolist(), strict=True):
            n = ctx[b]
            if j == n // bs and n % bs:
                slab.v_wide[first_row + b, :, j, n % bs :] = 0
        # Padding: a column holding no block (-1) is zero already (zeroed when it was
        # marked, or never written: `patch` and the widening above write held columns).
        for b in np.flatnonzero(used < nb).tolist():
            row = first_row + b
            held = np.flatnonzero(slab.block[row, used[b] : nb] != -1) + used[b]
            if held.size:
                slab.v_wide[row, :, held] = 0
                slab.block[row, held] = -1  # zeros now, not the block's values
                slab.valid[row, held] = 0
        kvh, hd = kv_pool.shape[4], kv_pool.shape[5]
        k_t = slab.k_wide[rows, :, :, :nb].reshape(bsz, kvh, hd, nb * bs)
        v = slab.v_wide[rows, :, :nb].reshape(bsz, kvh, nb * bs, hd)
        return k_t, v

    def _fit(
        self, num_rows: int, num_blocks: int, kv_pool: np.ndarray, generation: np.ndarray
    ) -> None:
        """Start over for another pool or one of another block shape, then `_grow`."""
        slab = self._slabs[0]
        block_shape = kv_pool.shape[4], kv_pool.shape[5], kv_pool.shape[3]
        if slab is not None and (
            generation is not self._source
            or slab.k_wide.shape[1:3] + slab.k_wide.shape[4:] != block_shape
        ):
            self._slabs = [None] * self._num_layers
            self._rows, self._last_used, self._released = {}, [], set()
        self._source = generation
        self._grow(num_rows, num_blocks, kv_pool)

    def _grow(self, num_rows: int, num_blocks: int, kv_pool: np.ndarray) -> None:
        """Grow every layer's slab to cover the request, as far as `max_bytes` allows
        (columns first: rows that no longer fit are dropped and their sequences fall
        back)."""
        rows, cols = len(self._last_used), self.num_block_columns()
        if num_rows <= rows and num_blocks <= cols:
            return
        block_shape = kv_pool.shape[3:]
        per_cell = (int(np.prod(block_shape)) * (4 + 8) + 24) * self._num_layers
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
                k_wide=np.zeros((new_rows, kvh, hd, new_cols, bs), dtype=np.float32),
                v_wide=np.zeros((new_rows, kvh, new_cols, bs, hd), dtype=np.float64),
                block=np.full((new_rows, new_cols), -1, dtype=np.int64),
                generation=np.zeros((new_rows, new_cols), dtype=np.int64),
                valid=np.zeros((new_rows, new_cols), dtype=np.int64),
            )
            if old is not None:
                kept = (slice(keep_rows), slice(keep_cols))
                slab.block[kept] = old.block[kept]
                slab.generation[kept] = old.generation[kept]
                slab.valid[kept] = old.valid[kept]
                k_kept = (slice(keep_rows), slice(None), slice(None), slice(keep_cols))
                slab.k_wide[k_kept] = old.k_wide[k_kept]
                v_kept = (slice(keep_rows), slice(None), slice(keep_cols))
                slab.v_wide[v_kept] = old.v_wide[v_kept]
            self._slabs[layer_idx] = slab
        self._rows = {k: r for k, r in self._rows.items() if r < new_rows}
        self._released = {r for r in self._released if r < new_rows}
        self._last_used = self._last_used[:new_rows] + [0] * (new_rows - keep_rows)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
