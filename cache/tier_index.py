"""In-memory index of the blocks one lower tier (DDR or flash) holds.

The manager keeps one per tier to answer prefix lookups without I/O and to enforce the
tier's byte capacity: it decides what to demote or delete *before* the store is full,
so Redis never has to drop a block on its own. Owned by the engine thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from cache.block_hash import BlockHash
from cache.policies.eviction import make_policy


class TierIndex:
    """Which blocks a tier holds, their stored sizes, and their eviction order."""

    def __init__(
        self,
        capacity_bytes: int,
        eviction_policy: str = "lru",
        on_change: Callable[[BlockHash, bool], None] | None = None,
    ) -> None:
        """`on_change(block_hash, added)` is called after a block enters or leaves."""
        self.capacity_bytes = capacity_bytes
        self._on_change = on_change
        self.used_bytes = 0
        self._sizes: dict[BlockHash, int] = {}
        self._policy = make_policy(eviction_policy)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[BlockHash]:
        """Blocks in eviction order (first = next victim)."""
        return iter(list(self._policy))

    @property
    def is_enabled(self) -> bool:
        return self.capacity_bytes > 0

    def fits(self, size: int) -> bool:
        """Whether a block of `size` bytes could ever be stored here."""
        return self.is_enabled and size <= self.capacity_bytes

    def has_room(self, size: int) -> bool:
        return self.used_bytes + size <= self.capacity_bytes

    def add(self, block_hash: BlockHash, size: int) -> None:
        if block_hash in self._sizes:
            self._policy.touch(block_hash)
            return
        self._sizes[block_hash] = size
        self.used_bytes += size
        self._policy.insert(block_hash)
        if self._on_change is not None:
            self._on_change(block_hash, True)

    def add_many(self, block_hashes: list[BlockHash], size: int) -> None:
        """``add(h, size)`` for each of ``block_hashes`` in order (first = next victim);
        on an empty index in C-speed bulk operations (a start-up rebuild of 1M blocks)."""
        sizes = dict.fromkeys(block_hashes, size)
        if self._sizes or len(sizes) != len(block_hashes):
            for block_hash in block_hashes:
                self.add(block_hash, size)
            return
        self._sizes = sizes
        self.used_bytes = size * len(block_hashes)
        self._policy.insert_many(block_hashes)

    def note_request(self, block_hashes: Sequence[BlockHash]) -> None:
        """Tell the eviction policy a new request uses this chain (see
        `EvictionPolicy.note_request`)."""
        self._policy.note_request(block_hashes)

    def note_chain(self, block_hashes: Sequence[BlockHash]) -> None:
        """See `EvictionPolicy.note_chain`."""
        self._policy.note_chain(block_hashes)

    def touch(self, block_hash: BlockHash) -> None:
        self.touch_many((block_hash,))

    def touch_many(self, block_hashes: Sequence[BlockHash]) -> None:
        """`touch` each of `block_hashes`, in order (one call per load, not per block)."""
        touch, sizes = self._policy.touch, self._sizes
        for block_hash in block_hashes:
            if block_hash in sizes:
                touch(block_hash)

    def remove(self, block_hash: BlockHash) -> bool:
        size = self._sizes.pop(block_hash, None)
        if size is None:
            return False
        self.used_bytes -= size
        self._policy.remove(block_hash)
        if self._on_change is not None:
            self._on_change(block_hash, False)
        return True

    def pop_victim(self) -> BlockHash | None:
        block_hash = self._policy.pop_victim()
        if block_hash is not None:
            self.used_bytes -= self._sizes.pop(block_hash)
            if self._on_change is not None:
                self._on_change(block_hash, False)
        return block_hash

    def pop_over_capacity(self) -> list[BlockHash]:
        """Pop victims until `used_bytes` is within `capacity_bytes` (or the policy has
        none left): the blocks the caller must delete from the tier, in the policy's order."""
        victims: list[BlockHash] = []
        while self.used_bytes > self.capacity_bytes:
            victim = self.pop_victim()
            if victim is None:
                break
            victims.append(victim)
        return victims
