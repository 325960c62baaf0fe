"""P/D disaggregation through a shared DDR pool: the cache manager's two hand-over steps.

A prefill replica writes a prompt's blocks through to DDR (`store_through`); a decode
replica, having found them in the shared store (`find_shared_prefix`, the one lookup: a
live shared-pool index would make it unnecessary), indexes them (`adopt`) so `match` and
`admit` treat them as any DDR hit. Mixed into `CacheManager` (it uses the manager's
index, and the store path and lanes of `cache.spill`) to keep that module one size;
engine thread only, as every manager method. server/pd.py drives both.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from cache.block_hash import BlockHash
from cache.spill import SpillPath
from cache.stats import Tier
from cache.tiers.base import StorageTier


def find_shared_prefix(store: StorageTier, hashes: Sequence[BlockHash]) -> list[BlockHash]:
    """The leading `hashes` that `store` holds (one batched existence check).

    Blocking; call it on the thread that owns `store`. A store failure (TierError)
    propagates.
    """
    if not hashes:
        return []
    present = store.contains_many(hashes)
    n = next((i for i, ok in enumerate(present) if not ok), len(hashes))
    return list(hashes[:n])


class PoolHandoff(SpillPath):
    """`CacheManager`'s P/D steps (see the module docstring), on its spill path."""

    def store_through(self, hashes: Sequence[BlockHash]) -> threading.Event | None:
        """Write the HBM-cached blocks of `hashes` that DDR lacks into DDR now (HBM keeps
        them), bypassing admission: a prefill replica's hand-over to decode replicas.

        Returns an event set once DDR's lane has run the writes (any thread may wait on
        it; a failed write shows as a missing block to the reader, who recomputes), or
        None when DDR is off or down. Blocks no longer in HBM are skipped: their eviction
        already spilled them (or admission refused them).
        """
        index = self._index.get(Tier.DDR)
        if index is None or self.health[Tier.DDR].is_down:
            return None
        blocks = [(h, b) for h in hashes if (b := self.pool.cached_block(h)) is not None]

        def should_store(block_hash: BlockHash) -> bool:
            if block_hash in index:
                index.touch(block_hash)
                return False
            return True

        self._store_blocks(Tier.DDR, blocks, should_store)
        return self._worker.barrier(Tier.DDR)

    def adopt(self, tier: Tier, hashes: Sequence[BlockHash]) -> int:
        """Index blocks that another process wrote to `tier`'s shared store (a decode
        replica learns of a prefill replica's blocks this way), in order, making room as
        for a spill; stops at the first that does not fit. Blocks already indexed (a
        shared pool's live index often has them first) are touched. Returns how many
        leading `hashes` are indexed now, already or added. The caller checked that the
        store holds them; one gone since is repaired as any missing block (the request
        recomputes).
        """
        index = self._index.get(tier)
        if index is None:
            return 0
        indexed = 0
        for block_hash in hashes:
            if block_hash in index:
                index.touch(block_hash)
            elif self._make_room(tier, self._block_size):
                index.add(block_hash, self._block_size)
            else:
                break
            indexed += 1
        return indexed
