"""Online eviction policies: which cached key goes first when a tier is full.

A policy only orders keys; it stores nothing and never decides *when* to evict (the
cache manager does, all-or-nothing).  Every policy implements :class:`EvictionPolicy`
and is picked by name from :data:`EVICTION_POLICIES` via :func:`make_policy`.  The
offline Belady optimum (which needs the future) lives in the load simulator, not here.

Policies are plain in-memory structures and not thread-safe: one owner thread (the
engine thread) calls them.  Every operation is O(1), except LFU's O(log n) victim
lookup.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class EvictionPolicy(ABC, Generic[K]):
    """Orders tracked keys from next victim to last.

    Contract shared by all policies:

    * ``insert(key)`` starts tracking ``key`` as the most recently used; inserting a key
      that is already tracked counts as ``touch(key)``.
    * ``touch(key)`` records a use; raises ``KeyError`` if ``key`` is not tracked
      (a bookkeeping bug in the caller).
    * ``remove(key)`` stops tracking ``key``; a no-op if it is not tracked.
    * ``pop_victim()`` / ``peek_victim()`` return the next victim (popping removes it),
      or ``None`` when nothing is tracked.
    * iteration yields keys in victim order (first = next victim), ``len`` and ``in``
      work as for a set.
    """

    @abstractmethod
    def insert(self, key: K) -> None: ...

    def insert_many(self, keys: Sequence[K]) -> None:
        """``insert(k)`` for each of ``keys`` in order; faster where a policy allows."""
        for key in keys:
            self.insert(key)

    def note_request(self, hashes: Sequence[K]) -> None:  # noqa: B027 (optional hook)
        """A new request uses the block chain ``hashes`` (root first); called once per
        request before its blocks are touched or inserted. Only request-aware policies
        (``prefix-aware``) use it."""

    def note_chain(self, hashes: Sequence[K]) -> None:  # noqa: B027 (optional hook)
        """The blocks ``hashes`` follow one another in one request's sequence (output
        blocks included); called before they are inserted. Only ``prefix-aware`` uses it."""

    @abstractmethod
    def touch(self, key: K) -> None: ...

    @abstractmethod
    def remove(self, key: K) -> None: ...

    @abstractmethod
    def peek_victim(self) -> K | None: ...

    def pop_victim(self) -> K | None:
        """Remove and return the next victim, or ``None`` when empty."""
        key = self.peek_victim()
        if key is not None:
            self.remove(key)
        return key

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[K]: ...


class _OrderedPolicy(EvictionPolicy[K]):
    """Shared base for policies that keep one queue, front = next victim."""

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def remove(self, key: K) -> None:
        self._order.pop(key, None)

    def insert_many(self, keys: Sequence[K]) -> None:
        order: OrderedDict[K, None] = OrderedDict.fromkeys(keys)
        if self._order or len(order) != len(keys):
            super().insert_many(keys)  # LRU and FIFO differ on keys already tracked
        else:
            self._order = order

    def peek_victim(self) -> K | None:
        return next(iter(self._order), None)

    def pop_victim(self) -> K | None:
        if not self._order:
            return None
        return self._order.popitem(last=False)[0]

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[K]:
        return iter(self._order)


class LruPolicy(_OrderedPolicy[K]):
    """Least recently used first; insert and touch move a key to the back."""

    def insert(self, key: K) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: K) -> None:
        self._order.move_to_end(key)  # raises KeyError if untracked


class FifoPolicy(_OrderedPolicy[K]):
    """First inserted, first evicted; uses do not change the order."""

    def insert(self, key: K) -> None:
        self._order.setdefault(key, None)

    def touch(self, key: K) -> None:
        if key not in self._order:
            raise KeyError(key)


class LfuPolicy(EvictionPolicy[K]):
    """Least frequently used first; ties go to the least recently used.

    A key starts at frequency 1 on insert and gains 1 per touch.  Keys are kept in one
    LRU-ordered bucket per frequency, with a lazily cleaned min-heap of the frequencies
    in use: insert/touch/remove are O(1) amortised (plus a heap push when a new
    frequency appears), ``peek_victim`` is O(log n) amortised.
    """

    def __init__(self) -> None:
        self._freq: dict[K, int] = {}
        self._buckets: dict[int, OrderedDict[K, None]] = {}
        self._heap: list[int] = []  # may hold frequencies whose bucket is gone

    def _add(self, key: K, freq: int) -> None:
        bucket = self._buckets.get(freq)
        if bucket is None:
            bucket = self._buckets[freq] = OrderedDict()
            heapq.heappush(self._heap, freq)
            if len(self._heap) > 2 * len(self._buckets) + 16:
                self._heap = list(self._buckets)
                heapq.heapify(self._heap)
        bucket[key] = None
        self._freq[key] = freq

    def _discard(self, key: K, freq: int) -> None:
        bucket = self._buckets[freq]
        del bucket[key]
        if not bucket:
            del self._buckets[freq]

    def insert(self, key: K) -> None:
        if key in self._freq:
            self.touch(key)
        else:
            self._add(key, 1)

    def touch(self, key: K) -> None:
        freq = self._freq[key]  # raises KeyError if untracked
        self._discard(key, freq)
        self._add(key, freq + 1)

    def remove(self, key: K) -> None:
        freq = self._freq.pop(key, None)
        if freq is not None:
            self._discard(key, freq)

    def peek_victim(self) -> K | None:
        while self._heap and self._heap[0] not in self._buckets:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return next(iter(self._buckets[self._heap[0]]))

    def frequency(self, key: K) -> int:
        """Uses recorded for ``key`` (1 after insert); raises ``KeyError`` if untracked."""
        return self._freq[key]

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def __iter__(self) -> Iterator[K]:
        for freq in sorted(self._buckets):
            yield from self._buckets[freq]


from cache.policies.prefix_aware import PrefixAwarePolicy  # noqa: E402 (needs the base)

EVICTION_POLICIES: Mapping[str, type[EvictionPolicy[Any]]] = MappingProxyType(
    {
        "lru": LruPolicy,
        "fifo": FifoPolicy,
        "lfu": LfuPolicy,
        "prefix-aware": PrefixAwarePolicy,
    }
)
"""Registered online policies by name (lower case)."""


def make_policy(name: str) -> EvictionPolicy[Any]:
    """Return a new, empty policy registered as ``name`` (case-insensitive).

    Raises ``ValueError`` listing the registered names if ``name`` is unknown.
    """
    cls = EVICTION_POLICIES.get(name.lower())
    if cls is None:
        raise ValueError(
            f"unknown eviction policy {name!r}; choose one of {sorted(EVICTION_POLICIES)}"
        )
    return cls()
