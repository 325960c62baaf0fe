"""An in-process storage tier for the simulator (never used by the server).

`tierkv simulate` runs the real `CacheManager` over a one-element-per-token KV layout
(see `server.simulate.sizing`), so what its DDR and flash tiers hold is a few dozen
bytes per block: enough for the manager's checksummed block format and index, no KV
bytes. A dict is all that needs. It implements the whole `StorageTier` contract.
"""

from __future__ import annotations

from collections.abc import Iterator

from cache.block_hash import BlockHash
from cache.tiers.base import StorageTier


class MemoryTier(StorageTier):
    """Blocks in a dict, in insertion order (`scan` lists least recently written first)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._blocks: dict[BlockHash, bytes] = {}

    def contains(self, key: BlockHash) -> bool:
        return key in self._blocks

    def get(self, key: BlockHash) -> bytes | None:
        return self._blocks.get(key)

    def put(self, key: BlockHash, value: bytes) -> None:
        self._blocks.pop(key, None)  # re-writing makes it the newest
        self._blocks[key] = bytes(value)

    def remove(self, key: BlockHash) -> None:
        self._blocks.pop(key, None)

    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        for key, value in list(self._blocks.items()):
            yield key, len(value)

    def close(self) -> None:
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self._blocks)
