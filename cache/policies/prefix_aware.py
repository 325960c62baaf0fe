"""``prefix-aware`` eviction: leaves first, orphans first, learned reuse odds per class.

A prefix cache only serves a request's *leading* cached blocks, so three things matter
that plain LRU ignores:

* **Leaves first.** A block is evicted only when this tier holds none of its children
  (as last noted): when the chosen block has some, its deepest descendant goes instead
  (the oldest child at each level), as SGLang's radix cache evicts leaves only. So a
  tier never holds a block whose parent it evicted.
* **Orphans.** A block inserted while its parent is gone (this policy evicted the parent
  and has not held it since; e.g. a block a request held in HBM while its parent was
  evicted) cannot be a prefix hit through this tier: it goes first, before any other,
  oldest first. (Evicted from HBM or DDR it moves one tier down, next to its parent.)
  When the parent is inserted again, its orphans return to the LRU order as just used.
* **Which chains come back.** Every request is classed, when the caller notes it
  (:meth:`PrefixAwarePolicy.note_request`), as a *continuation* if its chain runs
  through the end of an earlier request's chain (a conversation's next turn reuses its
  whole previous prompt), otherwise as *fresh*; its blocks take its class. The policy
  learns online, per class, the odds ``p`` that a chain is continued, and the
  distribution of the gap (in noted requests) until it is. A block last used ``a``
  requests ago in class ``c`` is still to be reused with the conditional probability
  ``p_c S(a) / (p_c S(a) + 1 - p_c)`` (``S``: the share of observed gaps longer than
  ``a``); the victim is the oldest block of the class where that is lowest (within a
  class, blocks go in LRU order).

Before any request is noted (or if the caller never notes any) every block is fresh,
without parent, and the policy is plain LRU. Memory: the class and parent of the last
``max(4 x tracked, 4096)`` noted blocks (keys only), and as many chain ends and evicted
keys.

This is HyperOffload's "frequency x recompute / transfer" with the frequency replaced by
a learned reuse probability: our blocks all cost the same to recompute and to move per
tier. Costs: ``note_request`` O(blocks of the request); insert, touch and remove O(1);
``pop_victim`` O(number of classes + depth of the chosen block's subtree). Not
thread-safe (the engine thread owns it).
"""

from __future__ import annotations

import copy
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from typing import Generic

from cache.policies.eviction import EvictionPolicy, K

FRESH = 0
CONTINUATION = 1
_CLASSES = (FRESH, CONTINUATION)
_ORPHAN = -1
_MIN_GHOST = 4096
_CHAIN_END_BLOCKS = 2
"""Blocks at a chain's end marked as its end: the last one, and the one before (in a
Mooncake trace a request's last block is usually partial, so the next turn's chain runs
through the one before; in the server a chain holds full blocks only)."""


class PrefixAwarePolicy(EvictionPolicy[K], Generic[K]):
    """See the module docstring. The contract is :class:`EvictionPolicy`'s, plus
    ``note_request``."""

    def __init__(self) -> None:
        # per class, in LRU order: key -> (clock when last used, placement sequence)
        self._lists: dict[int, OrderedDict[K, tuple[int, int]]] = {
            c: OrderedDict() for c in _CLASSES
        }
        self._seq = 0
        self._orphans: OrderedDict[K, int] = OrderedDict()  # -> placement sequence
        self._where: dict[K, int] = {}  # tracked key -> its class, or _ORPHAN
        self._parent: dict[K, K] = {}  # tracked key -> its parent when inserted
        self._children: dict[K, set[K]] = {}  # parent (tracked or not) -> tracked children
        self._meta: OrderedDict[K, tuple[int, K | None]] = OrderedDict()  # class, parent
        self._ends: OrderedDict[K, tuple[int, int]] = OrderedDict()  # open chain ends
        self._gone: OrderedDict[K, None] = OrderedDict()  # evicted by us, not back since
        self._clock = 0  # requests noted
        self._noted = Counter[int]()
        self._continued = Counter[int]()
        self._gaps = Counter[int]()  # continuation gaps, by bit length
        self._num_gaps = 0
        self._survival: dict[int, float] = {}  # S by bit length, cleared on a new gap

    # -- request notes and learning ------------------------------------------------------

    def note_request(self, hashes: Sequence[K]) -> None:
        """A new request uses the chain ``hashes`` (its blocks in order, root first).

        Call once per request, before it touches or inserts its blocks; a preempted
        request resuming is not a new request."""
        self._clock += 1
        cls = FRESH
        for key in reversed(hashes):
            end = self._ends.pop(key, None)
            if end is not None:
                end_cls, noted_at = end
                self._continued[end_cls] += 1
                self._gaps[(self._clock - noted_at).bit_length()] += 1
                self._num_gaps += 1
                self._survival.clear()
                cls = CONTINUATION
                break
        self._noted[cls] += 1
        parent: K | None = None
        for key in hashes:
            self._gone.pop(key, None)  # the request brings it back (a hit, load or compute)
            self._meta[key] = (cls, parent)
            self._meta.move_to_end(key)
            parent = key
        for key in hashes[-_CHAIN_END_BLOCKS:]:
            self._ends[key] = (cls, self._clock)
            self._ends.move_to_end(key)
        bound = self._ghost_bound()
        for ghost in (self._meta, self._ends):
            while len(ghost) > bound:
                ghost.popitem(last=False)

    def note_chain(self, hashes: Sequence[K]) -> None:
        """The blocks ``hashes`` follow one another in one request's sequence (its output
        blocks included, which ``note_request`` never saw): each gets its predecessor as
        parent, and a block not noted yet its predecessor's class. Not a new request."""
        if not hashes:
            return
        prev = hashes[0]
        cls = self._meta.get(prev, (FRESH, None))[0]
        for key in hashes[1:]:
            meta = self._meta.get(key)
            if meta is None or meta[1] != prev:
                self._meta[key] = (cls if meta is None else meta[0], prev)
            cls = self._meta[key][0]
            prev = key
        bound = self._ghost_bound()
        while len(self._meta) > bound:
            self._meta.popitem(last=False)

    def _ghost_bound(self) -> int:
        return max(4 * len(self._where), _MIN_GHOST)

    def continuation_odds(self, cls: int) -> float:
        """Learned probability that a chain of class ``cls`` is continued (Laplace)."""
        return (self._continued[cls] + 1) / (self._noted[cls] + 2)

    def _survives(self, age: int) -> float:
        """Share of observed continuation gaps longer than ``age`` requests."""
        bucket = age.bit_length()
        cached = self._survival.get(bucket)
        if cached is None:
            if self._num_gaps == 0:
                return 1.0
            longer = sum(n for b, n in self._gaps.items() if b > bucket)
            cached = (longer + self._gaps.get(bucket, 0) / 2) / self._num_gaps
            self._survival[bucket] = cached
        return cached

    def reuse_score(self, cls: int, age: int) -> float:
        """Probability that a block of class ``cls`` last used ``age`` requests ago is
        used again, under the learned odds and gaps."""
        p = self.continuation_odds(cls) * self._survives(age)
        return p / (p + 1.0 - self.continuation_odds(cls))

    # -- EvictionPolicy --------------------------------------------------------------------

    def insert(self, key: K) -> None:
        if key in self._where:
            self.touch(key)
            return
        cls, parent = self._meta.get(key, (FRESH, None))
        self._seq += 1
        self._lists[cls][key] = (self._clock, self._seq)
        self._where[key] = cls
        self._gone.pop(key, None)
        if parent is not None:
            self._parent[key] = parent
            self._children.setdefault(parent, set()).add(key)
            if parent in self._gone:  # cannot be a prefix hit here until the parent returns
                self._orphans[key] = self._lists[cls].pop(key)[1]
                self._where[key] = _ORPHAN
        orphans = [c for c in self._children.get(key, ()) if self._where[c] == _ORPHAN]
        for child in sorted(orphans, key=self._orphans.__getitem__):  # in their order
            del self._orphans[child]
            self._place(child)

    def touch(self, key: K) -> None:
        where = self._where[key]  # raises KeyError if untracked
        if where == _ORPHAN:
            return  # its parent is gone: a use without the parent cannot be a prefix hit
        del self._lists[where][key]
        self._place(key)

    def _place(self, key: K) -> None:
        cls = self._meta.get(key, (FRESH, None))[0]
        self._seq += 1
        self._lists[cls][key] = (self._clock, self._seq)
        self._where[key] = cls

    def remove(self, key: K) -> None:
        where = self._where.pop(key, None)
        if where is None:
            return
        if where == _ORPHAN:
            del self._orphans[key]
        else:
            del self._lists[where][key]
        parent = self._parent.pop(key, None)
        if parent is not None:
            siblings = self._children[parent]
            siblings.discard(key)
            if not siblings:
                del self._children[parent]

    def peek_victim(self) -> K | None:
        if self._orphans:
            return self._deepest(next(iter(self._orphans)))
        best: tuple[float, int, K] | None = None
        for entries in self._lists.values():
            if entries:
                key, (used_at, seq) = next(iter(entries.items()))
                cls = self._where[key]
                candidate = (self.reuse_score(cls, self._clock - used_at), seq, key)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        return None if best is None else self._deepest(best[2])

    def _deepest(self, key: K) -> K:
        """``key``'s deepest tracked descendant by oldest children (``key`` if a leaf)."""
        while children := self._children.get(key):
            key = min(children, key=lambda c: self._lists[self._where[c]][c][1])
        return key

    def pop_victim(self) -> K | None:
        key = self.peek_victim()
        if key is None:
            return None
        self.remove(key)
        self._gone[key] = None
        while len(self._gone) > self._ghost_bound():
            self._gone.popitem(last=False)
        return key

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[K]:
        """Victim order as of now (the order repeated ``pop_victim`` calls would give),
        computed on a copy: O(n log n)."""
        clone = self._copy_for_popping()
        while (key := clone.pop_victim()) is not None:
            yield key

    def _copy_for_popping(self) -> PrefixAwarePolicy[K]:
        """A copy whose ``pop_victim`` calls leave this policy as it is (notes and learned
        odds are shared: popping reads them only)."""
        clone: PrefixAwarePolicy[K] = copy.copy(self)
        clone._lists = {c: entries.copy() for c, entries in self._lists.items()}
        clone._orphans = self._orphans.copy()
        clone._gone = self._gone.copy()
        clone._where = self._where.copy()
        clone._parent = self._parent.copy()
        clone._children = {k: v.copy() for k, v in self._children.items()}
        return clone
