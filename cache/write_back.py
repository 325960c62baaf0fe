"""What a graceful shutdown writes back to flash, in which order (see
`CacheManager.write_back`)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence

from cache.block_hash import BlockHash

WriteBackItem = tuple[BlockHash, int | None]  # (hash, HBM block id, or None: from DDR)


def plan_write_back(
    hbm_newest_first: Sequence[tuple[BlockHash, int]],
    ddr_newest_first: Iterable[BlockHash],
    in_flash: Container[BlockHash],
    budget: int,
) -> list[WriteBackItem]:
    """Blocks flash lacks, HBM's first then DDR's, each newest first, at most `budget`.

    Chains are touched leaf-first, so "newest" puts shared prefixes (parents) before
    their descendants: the most-shared blocks are written first.
    """
    todo: list[WriteBackItem] = [(h, b) for h, b in hbm_newest_first if h not in in_flash]
    queued = {h for h, _ in todo}
    todo += [(h, None) for h in ddr_newest_first if h not in in_flash and h not in queued]
    return todo[: max(0, budget)]
