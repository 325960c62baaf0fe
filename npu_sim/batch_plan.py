"""How a batch of sequence chunks is laid out for one model step: validated rows, and
decode rows grouped for batched attention (with their `WideContext` rows).

`plan_batch` checks the chunks and gives every row its token, position and pool block;
`group_decodes` cuts the single-token chunks into groups attended in one call each.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from npu_sim.model_config import ModelConfig
from npu_sim.wide_context import WideContext

# Widened context bytes per decode attention call (K float32 + V float64 of a few
# sequences) widened on the spot: small enough to stay in cache and skip the page faults
# of fresh multi-megabyte temporaries (batch 32, 1k context: 4 sequences a call, 2x
# faster than one call). Contexts kept in `WideContext` are views, not temporaries:
# larger calls, fewer of them (33-35 vs 41 ms per batch-32 step at 32 vs 4 MiB).
_DECODE_GROUP_BYTES = 4 << 20
_CACHED_GROUP_BYTES = 32 << 20


@dataclass(slots=True)
class SeqChunk:
    """A run of consecutive tokens of one sequence to push through the model.

    token_ids: the new tokens (at least one); token_ids[0] sits at absolute `start_pos`,
        and positions < start_pos already have their KV in the pool.
    block_table: pool block ids covering positions [0, start_pos + len(token_ids)).
    needs_logits: return the logits of the chunk's last token.
    seq_key: what names the sequence across steps (the executor passes its seq_id), unique
        in a batch: a decode's widened context is kept per key. None: keyed by its first
        block and its order among the batch's sequences sharing that block, which shifts
        when one of them finishes (their contexts are then widened again: slower, never
        other bits).
    """

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    needs_logits: bool = True
    seq_key: Hashable | None = None


@dataclass(frozen=True, slots=True)
class Patches:
    """Decode rows whose new token goes into a kept `WideContext` row: their rows in
    the batch and in `WideContext`, the token's position and the pool block it goes to
    (a block no other token of the step writes)."""

    batch_rows: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    blocks: np.ndarray


@dataclass(frozen=True, slots=True)
class DecodeGroup:
    """Decode rows attended in one call: batch indices, their block tables (padded with
    block 0) and context lengths, and their first `WideContext` row (None: uncached)."""

    members: list[int]
    table: np.ndarray
    ctx: list[int]
    first_row: int | None


def plan_batch(
    batch: Sequence[SeqChunk], kv_pool: np.ndarray, vocab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the batch; return token ids, absolute positions and pool block per row."""
    num_blocks, block_size = kv_pool.shape[0], kv_pool.shape[3]
    ids, positions, blocks = [], [], []
    # Decodes in plain Python (numpy calls cost more than the work for one token),
    # collected into one array per run of consecutive decodes.
    run_ids: list[int] = []
    run_pos: list[int] = []
    run_blocks: list[int] = []

    def flush() -> None:
        if run_ids:
            ids.append(np.array(run_ids, dtype=np.int64))
            positions.append(np.array(run_pos, dtype=np.int64))
            blocks.append(np.array(run_blocks, dtype=np.int64))
            run_ids.clear()
            run_pos.clear()
            run_blocks.clear()

    for chunk in batch:
        n = len(chunk.token_ids)
        if n == 0 or chunk.start_pos < 0:
            raise ValueError("a chunk needs >= 1 token and start_pos >= 0")
        if n == 1:
            token, start = int(chunk.token_ids[0]), int(chunk.start_pos)
            if not 0 <= token < vocab:
                raise ValueError("token id outside the vocabulary")
            num_needed = start // block_size + 1
            if len(chunk.block_table) < num_needed:
                raise ValueError(
                    f"block table covers {len(chunk.block_table)} blocks, need {num_needed}"
                )
            written = int(chunk.block_table[num_needed - 1])
            if not 0 <= written < num_blocks:  # the rest of its table: `group_decodes`
                raise ValueError("block id outside the KV pool")
            run_ids.append(token)
            run_pos.append(start)
            run_blocks.append(written)
            continue
        flush()
        chunk_ids = np.asarray(chunk.token_ids, dtype=np.int64)
        if chunk_ids.min() < 0 or chunk_ids.max() >= vocab:
            raise ValueError("token id outside the vocabulary")
        table = np.asarray(chunk.block_table, dtype=np.int64)
        num_needed = -(-(chunk.start_pos + n) // block_size)
        if table.shape[0] < num_needed:
            raise ValueError(f"block table covers {table.shape[0]} blocks, need {num_needed}")
        if table[:num_needed].min() < 0 or table[:num_needed].max() >= num_blocks:
            raise ValueError("block id outside the KV pool")
        pos = np.arange(chunk.start_pos, chunk.start_pos + n, dtype=np.int64)
        ids.append(chunk_ids)
        positions.append(pos)
        blocks.append(table[pos // block_size])
    flush()
    all_pos, all_blocks = np.concatenate(positions), np.concatenate(blocks)
    slots = all_blocks * block_size + all_pos % block_size
    if np.unique(slots).shape[0] != slots.shape[0]:
        raise ValueError("two tokens of the batch write the same KV slot")
    return np.concatenate(ids), all_pos, all_blocks


def row_key(seq_key: Hashable) -> Hashable:
    """The `WideContext` key of the sequence named `seq_key` (unkeyed sequences get
    (first block, order) keys, which this never equals)."""
    return ("seq", seq_key)


def group_decodes(
    batch: Sequence[SeqChunk],
    config: ModelConfig,
    wide: WideContext,
    kv_pool: np.ndarray,
    generation: np.ndarray | None,
    slot_blocks: np.ndarray,
) -> tuple[list[DecodeGroup], Patches | None]:
    """Cut the batch's single-token chunks into groups of at most
    `_CACHED_GROUP_BYTES` (`_DECODE_GROUP_BYTES` if uncached) of widened context:
    those with a `WideContext` row in runs of consecutive rows, the rest by length
    (similar lengths together: little padding). Only a counted pool (`generation`)
    gets rows. Also returns what the rows' new tokens write (`WideContext.patch`)."""
    decodes = [i for i, c in enumerate(batch) if len(c.token_ids) == 1]
    if not decodes:
        return [], None
    block_size = kv_pool.shape[3]
    ctx = {i: batch[i].start_pos + 1 for i in decodes}
    # Each decode's context blocks, checked before any cache state changes or any write.
    tables: dict[int, np.ndarray] = {}
    for i in decodes:
        try:
            table = np.asarray(batch[i].block_table[: -(-ctx[i] // block_size)], dtype=np.int64)
        except OverflowError as exc:
            raise ValueError("block id outside the KV pool") from exc
        if table.min() < 0 or table.max() >= kv_pool.shape[0]:
            raise ValueError("block id outside the KV pool")
        tables[i] = table
    num_blocks = -(-max(ctx.values()) // block_size)
    seq_bytes = 12 * num_blocks * block_size * config.num_kv_heads * config.head_dim
    size = max(1, _DECODE_GROUP_BYTES // seq_bytes)
    cached_size = max(1, _CACHED_GROUP_BYTES // seq_bytes)
    # A sequence's key: its seq_key, else its first block, told apart from others
    # sharing it by order.
    seen: dict[int, int] = {}
    keys: list[Hashable] = []
    for i in decodes:
        if batch[i].seq_key is not None:
            keys.append(row_key(batch[i].seq_key))
            continue
        first = int(batch[i].block_table[0])
        keys.append((first, seen.get(first, 0)))
        seen[first] = seen.get(first, 0) + 1
    if len(set(keys)) != len(keys):
        raise ValueError("two chunks of the batch have the same seq_key")
    rows: list[int | None] = [None] * len(decodes)
    if generation is not None:
        rows = wide.assign_rows(keys, num_blocks, kv_pool, generation, [tables[i] for i in decodes])
    cached = sorted((r, i) for r, i in zip(rows, decodes, strict=True) if r is not None)
    runs: list[tuple[int | None, list[int]]] = []
    for r, i in cached:
        last = runs[-1] if runs else None
        if (
            last is not None
            and last[0] is not None
            and last[0] + len(last[1]) == r
            and len(last[1]) < cached_size
        ):
            last[1].append(i)
        else:
            runs.append((r, [i]))
    rest = sorted((i for r, i in zip(rows, decodes, strict=True) if r is None), key=ctx.__getitem__)
    runs += [(None, rest[lo : lo + size]) for lo in range(0, len(rest), size)]
    groups = []
    for first_row, members in runs:
        nb = -(-max(ctx[i] for i in members) // block_size)
        table = np.zeros((len(members), nb), dtype=np.int64)
        for b, i in enumerate(members):
            table[b, : len(tables[i])] = tables[i]
        groups.append(DecodeGroup(members, table, [ctx[i] for i in members], first_row))
    patches = None
    if cached:
        starts = np.cumsum([0] + [len(c.token_ids) for c in batch[:-1]])
        batch_rows = starts[[i for _, i in cached]]
        # A patch copies in only its own token, so a block another token of this step
        # also writes is left to `gather`, which re-widens it (its generation moved).
        written, counts = np.unique(slot_blocks, return_counts=True)
        alone = counts[np.searchsorted(written, slot_blocks[batch_rows])] == 1
        patches = Patches(
            batch_rows=batch_rows[alone],
            rows=np.array([r for r, _ in cached], dtype=np.int64)[alone],
            positions=np.array([batch[i].start_pos for _, i in cached], dtype=np.int64)[alone],
            blocks=slot_blocks[batch_rows][alone],
        )
    return groups, patches
