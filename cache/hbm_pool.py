"""The HBM tier: the device KV block pool and its allocator.

A block is in exactly one of three states:

* free: not cached, refcount 0, in `_free` (ready to hand out);
* in use: refcount > 0 (held by running or loading requests);
* cached-free: refcount 0 but its hash is registered, so a later request with the same
  prefix can reuse it (prefix caching, as in vLLM). These blocks sit in the eviction
  policy and are reclaimed only when no plain free block is left.

Reclaiming a cached-free block returns its (hash, block id) to the caller so the cache
manager can spill its bytes before anyone writes into the slot.

Threading: owned by the engine thread. The transfer thread may write KV bytes into
slots that are in use by a request that is loading (refcount > 0, hash not registered),
which nobody else reads or writes until the load has finished.

Counted writes (the `npu_sim.kv_pool.KVPool` protocol, implemented here without
importing npu_sim): the pool keeps the only writable array of the KV bytes privately.
`kv` is a read-only view, so any write that does not go through `write_tokens`,
`write_blocks` or a `block_decoder()` raises. Each of those bumps
`generation[block, layer]` after writing the bytes (under a lock: lanes and the engine
write at once), so the model can keep widened copies of blocks and trust them while
their generation holds.
"""

from __future__ import annotations

import mmap
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cache.block_format import BlockDecoder
from cache.block_hash import BlockHash
from cache.layout import KVLayout
from cache.policies.eviction import make_policy
from cache.tiers.base import Buffer

_Bump = Callable[[Sequence[int] | np.ndarray, int | None], None]


def _resident_zeros(nbytes: int) -> mmap.mmap:
    """Zeroed anonymous memory with every page faulted in now.

    Real HBM is resident. Lazily mapped memory (np.zeros) takes a page fault on the
    first write to each page inside reloads and prefills: measured ~80 us per fresh
    16 KiB block against ~12 us into resident memory (`bench tiers` style reload of 500
    blocks: 41 ms vs 6-9 ms). MAP_POPULATE faults the range in the kernel (~1 s per GiB
    here); where it does not exist, touch each page.
    """
    populate = getattr(mmap, "MAP_POPULATE", 0)
    memory = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    if not populate:
        np.frombuffer(memory, dtype=np.uint8)[:: mmap.PAGESIZE] = 0
    return memory


@dataclass(slots=True)
class Allocation:
    """Blocks handed out by `HbmBlockPool.allocate`, plus cached blocks evicted for them."""

    block_ids: list[int]
    evicted: list[tuple[BlockHash, int]]


class HbmBlockPool:
    """Preallocated KV pool `[num_blocks, *layout.block_shape]` with refcounts and prefix cache."""

    def __init__(self, layout: KVLayout, num_blocks: int, eviction_policy: str = "lru") -> None:
        if num_blocks < 1:
            raise ValueError(f"HBM pool needs at least one block, got {num_blocks}")
        self.layout = layout
        self.num_blocks = num_blocks
        self._memory = _resident_zeros(num_blocks * layout.block_bytes)
        self._kv = np.frombuffer(self._memory, dtype=layout.np_dtype).reshape(
            num_blocks, *layout.block_shape
        )
        self._kv_view = _read_only(self._kv)
        self._generation = np.zeros((num_blocks, layout.num_layers), dtype=np.int64)
        self._generation_view = _read_only(self._generation)
        self._generation_lock = threading.Lock()
        self._refcount = [0] * num_blocks
        self._hash: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable = make_policy(eviction_policy)

    # -- KV bytes and counted writes -----------------------------------------------------

    @property
    def kv(self) -> np.ndarray:
        """The KV bytes `[num_blocks, *layout.block_shape]`, read-only (see module doc)."""
        return self._kv_view

    @property
    def generation(self) -> np.ndarray:
        """Read-only int64 `(num_blocks, num_layers)`, bumped after every write to a
        block's layer; never decreases. Always the same array object."""
        return self._generation_view

    def write_tokens(
        self, blocks: np.ndarray, offsets: np.ndarray, layer: int | None, values: np.ndarray
    ) -> None:
        """`kv[blocks, layer, :, offsets] = values` (`layer` None: every layer), then bump
        the written blocks' generations (the model's per-token writes)."""
        if layer is None:
            self._kv[blocks, :, :, offsets] = values
        else:
            self._kv[blocks, layer, :, offsets] = values
        self._bump(blocks, layer)

    def write_blocks(self, blocks: Sequence[int] | np.ndarray, values: np.ndarray) -> None:
        """`kv[blocks] = values` (whole blocks), then bump their generations."""
        self._kv[blocks] = values
        self._bump(blocks, None)

    def block_decoder(self) -> BlockDecoder:
        """A `BlockDecoder` into this pool that bumps the generations of the slots it was
        asked to fill after each call (also of slots it rejected: harmless). Thread-safe
        like `BlockDecoder`."""
        return _CountingDecoder(self._kv, self._bump)

    def _bump(self, blocks: Sequence[int] | np.ndarray, layer: int | None) -> None:
        with self._generation_lock:
            if layer is None:
                self._generation[blocks] += 1
            else:
                self._generation[blocks, layer] += 1

    # -- queries -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks `allocate` can hand out now (plain free + cached-free)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def num_used_blocks(self) -> int:
        """Blocks holding data: in use by requests or cached for reuse."""
        return self.num_blocks - len(self._free)

    @property
    def num_active_blocks(self) -> int:
        """Blocks referenced by requests (running, loading); the rest are reclaimable."""
        return self.num_blocks - len(self._free) - len(self._evictable)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def can_allocate_after_acquiring(self, cached: Sequence[int], num_blocks: int) -> bool:
        """Whether `num_blocks` could be allocated after `acquire_cached(cached)`.

        Acquiring a cached-free block takes it out of the reclaimable ones, so a prefix
        hit shrinks what `allocate` can hand out.
        """
        taken = sum(1 for block_id in set(cached) if self._refcount[block_id] == 0)
        return num_blocks <= self.num_free_blocks - taken

    def cached_block(self, block_hash: BlockHash) -> int | None:
        return self._cached.get(block_hash)

    def count_cached_prefix(self, hashes: Sequence[BlockHash]) -> int:
        """Number of leading `hashes` whose blocks are in HBM."""
        n = 0
        for h in hashes:
            if h not in self._cached:
                break
            n += 1
        return n

    def block_hash(self, block_id: int) -> BlockHash | None:
        return self._hash[block_id]

    # -- allocation ----------------------------------------------------------------------

    def allocate(self, num_blocks: int) -> Allocation | None:
        """Hand out `num_blocks` blocks with refcount 1, or None (and change nothing)."""
        if num_blocks > self.num_free_blocks:
            return None
        block_ids: list[int] = []
        evicted: list[tuple[BlockHash, int]] = []
        for _ in range(num_blocks):
            if self._free:
                block_id = self._free.popleft()
            else:
                block_hash = self._evictable.pop_victim()
                assert block_hash is not None  # guarded by num_free_blocks above
                block_id = self._cached.pop(block_hash)
                self._hash[block_id] = None
                evicted.append((block_hash, block_id))
            self._refcount[block_id] = 1
            block_ids.append(block_id)
        return Allocation(block_ids, evicted)

    def note_request(self, hashes: Sequence[BlockHash]) -> None:
        """Tell the eviction policy a new request uses this chain (see
        `EvictionPolicy.note_request`)."""
        self._evictable.note_request(hashes)

    def acquire_cached(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks (a prefix hit)."""
        for block_id in block_ids:
            if self._refcount[block_id] == 0:
                block_hash = self._hash[block_id]
                if block_hash is not None:
                    self._evictable.remove(block_hash)
            self._refcount[block_id] += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference on each block.

        Pass a sequence's blocks in order; they are released last-first so that, among
        blocks freed together, descendants become eviction victims before their parents,
        and the policy is told they chain (`EvictionPolicy.note_chain`).
        """
        self._evictable.note_chain([h for b in block_ids if (h := self._hash[b]) is not None])
        for block_id in reversed(block_ids):
            if self._refcount[block_id] <= 0:
                raise ValueError(f"double free of HBM block {block_id}")
            self._refcount[block_id] -= 1
            if self._refcount[block_id] == 0:
                block_hash = self._hash[block_id]
                if block_hash is None:
                    self._free.append(block_id)
                else:
                    self._evictable.insert(block_hash)

    def register(self, block_id: int, block_hash: BlockHash) -> bool:
        """Record that `block_id` holds the full block `block_hash`.

        Returns False (and leaves the block private) if another block already caches
        that hash, e.g. two requests computed the same prefix at the same time.
        """
        return bool(self.register_many((block_id,), (block_hash,)))

    def register_many(
        self, block_ids: Sequence[int], hashes: Sequence[BlockHash]
    ) -> list[BlockHash]:
        """`register` each `block_ids[i]` as `hashes[i]`, in order; returns the hashes
        registered (one call per landed load, not per block)."""
        cached, by_id = self._cached, self._hash
        registered: list[BlockHash] = []
        for block_id, block_hash in zip(block_ids, hashes, strict=True):
            if block_hash not in cached and by_id[block_id] is None:
                cached[block_hash] = block_id
                by_id[block_id] = block_hash
                registered.append(block_hash)
        return registered

    def cached_blocks_newest_first(self) -> list[tuple[BlockHash, int]]:
        """Every registered block: those in use first, then the evictable ones from the
        most recently used (the next victim comes last). Changes nothing."""
        evictable = list(self._evictable)
        in_use = [(h, b) for h, b in self._cached.items() if self._refcount[b] > 0]
        return in_use + [(h, self._cached[h]) for h in reversed(evictable)]

    def evict_all_cached(self) -> list[tuple[BlockHash, int]]:
        """Reclaim every cached-free block (for an explicit offload).

        The caller must copy the returned blocks' bytes out before allocating again.
        """
        evicted: list[tuple[BlockHash, int]] = []
        while (block_hash := self._evictable.pop_victim()) is not None:
            block_id = self._cached.pop(block_hash)
            self._hash[block_id] = None
            self._free.append(block_id)
            evicted.append((block_hash, block_id))
        return evicted


class _CountingDecoder(BlockDecoder):
    """`BlockDecoder` that counts its writes (`HbmBlockPool.block_decoder`)."""

    __slots__ = ("_bump",)

    def __init__(self, out: np.ndarray, bump: _Bump) -> None:
        super().__init__(out)
        self._bump = bump

    def __call__(
        self, bufs: Sequence[Buffer | None], keys: Sequence[bytes], slots: Sequence[int]
    ) -> list[bool]:
        try:
            return super().__call__(bufs, keys, slots)
        finally:  # after the bytes: a reader that saw the old generation looks again
            self._bump(np.asarray(slots, dtype=np.int64), None)


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of C-contiguous `array` whose flag cannot be set back (its base
    is a read-only buffer; `npu_sim.kv_pool.read_only` does the same)."""
    buffer = array.data.cast("B").toreadonly()
    return np.frombuffer(buffer, dtype=array.dtype).reshape(array.shape)
