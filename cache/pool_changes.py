"""What a shared pool's follower thread tells the engine thread, and how the engine applies it.

The follower (`cache.pool_follower.PoolFollower`, a `cache.pool.SharedPool`'s) reads the
pool's write log in Redis and queues `PoolChange`s; the engine thread drains them on its
next `poll()` and applies them to its own DDR index with `apply_changes` (the flash kinds
are `cache.pooled_manager`'s). So the index has one writer, the engine thread, and
`match` never waits on Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cache.block_hash import BlockHash
from cache.tier_index import TierIndex


class ChangeKind(StrEnum):
    ADD = "add"  # blocks entered the pool
    REMOVE = "remove"  # blocks left it (or a write of ours was refused)
    RESET = "reset"  # the whole index, least recently used first (start, resync)
    DEMOTE = "demote"  # this replica, the demoter, must demote these (claimed) blocks
    # A shared flash tier (`SharedPool.share_flash`):
    FLASH_ADD = "flash_add"  # another replica stored these blocks in our flash environment
    FLASH_REMOVE = "flash_remove"  # ... or deleted them
    FLASH_RESET = "flash_reset"  # every block the environment holds, oldest write first
    LEAD = "lead"  # this replica became the flash's writer; blocks: as FLASH_RESET
    FOLLOW = "follow"  # this replica is no longer the flash's writer


@dataclass(frozen=True, slots=True)
class PoolChange:
    kind: ChangeKind
    blocks: tuple[tuple[BlockHash, int], ...]  # (hash, stored bytes); size 0 if unknown


def apply_changes(
    index: TierIndex, changes: Sequence[PoolChange], block_size: int
) -> list[BlockHash]:
    """Apply the follower's changes to this replica's DDR index (engine thread).

    Returns the blocks this replica, as the demoter, must demote (already out of the
    pool's index: the caller moves them to flash, or deletes them)."""
    to_demote: list[BlockHash] = []
    for change in changes:
        if change.kind is ChangeKind.ADD:
            for block_hash, size in change.blocks:
                index.add(block_hash, size or block_size)
        elif change.kind is ChangeKind.REMOVE:
            for block_hash, _ in change.blocks:
                index.remove(block_hash)
        elif change.kind is ChangeKind.RESET:
            wanted = {h for h, _ in change.blocks}
            for block_hash in [h for h in index if h not in wanted]:
                index.remove(block_hash)
            for block_hash, size in change.blocks:  # least recently used first
                index.add(block_hash, size or block_size)
        elif change.kind is ChangeKind.DEMOTE:
            for block_hash, _ in change.blocks:
                index.remove(block_hash)
                to_demote.append(block_hash)
        # the flash kinds are the caller's (cache.pooled_manager)
    return to_demote
