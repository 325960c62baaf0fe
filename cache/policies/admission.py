"""Admission policies: which blocks are worth a place in the lower tiers (DDR, flash).

HBM always holds the blocks a request computes (the model attends over them). When HBM
evicts one, today's write-back stores it in DDR unconditionally; most of those blocks
are never asked for again (on the Mooncake conversation trace about two thirds of all
blocks are used once), and each one pushes a block that would have been reused out of
DDR and flash. An admission policy filters that stream, after the idea in HyperOffload
(score = access frequency x recompute cost / transfer cost): every block of our model
has the same recompute and transfer cost per tier, so the score reduces to the access
frequency, and the policies differ in how they estimate it:

* ``always``: every evicted block is written back (the behaviour before policies).
* ``second-hit``: only a block seen by an earlier request (a ghost LRU of hashes, no
  values) is admitted.
* ``frequency``: a count-min sketch of accesses with periodic halving (TinyLFU);
  a block is admitted when its estimate is >= 2 (Dynamo's frequency filter).
* ``write-through-selective``: SGLang HiCache's policy: a block is written to the lower
  tier as soon as it has been hit twice (while it is still in HBM, so its eviction later
  costs nothing), and only such blocks are ever written.

Contract: ``record_access(key)`` is called once per block per request that asks for it
(hit or miss, before deciding anything about that request); ``should_admit(key)``
answers whether ``key`` may be written to a lower tier now. ``writes_through`` tells the
caller to also store a block as soon as ``should_admit`` turns true on a hit, rather than
waiting for its eviction. Policies hold no values, are not thread-safe (one owner
thread: the engine thread) and cost O(1) per call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

DEFAULT_ADMISSION_POLICY = "always"


class AdmissionPolicy(ABC):
    """Decides whether a block may enter a lower tier. See the module docstring."""

    writes_through: bool = False

    def record_access(self, key: Hashable) -> None:  # noqa: B027 (optional hook)
        """A request asked for ``key`` (hit or miss)."""

    def record_accesses(self, keys: Iterable[Hashable]) -> None:
        """``record_access`` for each of ``keys`` in order (a policy that records nothing
        skips the per-block calls)."""
        if type(self).record_access is not AdmissionPolicy.record_access:
            for key in keys:
                self.record_access(key)

    @abstractmethod
    def should_admit(self, key: Hashable) -> bool:
        """Whether ``key`` may be written to a lower tier now."""


class AlwaysAdmit(AdmissionPolicy):
    """Write back every evicted block."""

    def should_admit(self, key: Hashable) -> bool:
        return True


class SecondHitAdmission(AdmissionPolicy):
    """Admit a block only if an earlier request asked for it too.

    Remembers the last ``ghost_capacity`` distinct keys asked for (keys only, LRU), and
    which of them were asked for more than once.
    """

    def __init__(self, ghost_capacity: int) -> None:
        if ghost_capacity < 1:
            raise ValueError(f"ghost_capacity must be >= 1, got {ghost_capacity}")
        self.ghost_capacity = ghost_capacity
        self._seen_again: OrderedDict[Hashable, bool] = OrderedDict()

    def record_access(self, key: Hashable) -> None:
        seen = self._seen_again
        if key in seen:
            seen[key] = True
            seen.move_to_end(key)
            return
        seen[key] = False
        if len(seen) > self.ghost_capacity:
            seen.popitem(last=False)

    def should_admit(self, key: Hashable) -> bool:
        return self._seen_again.get(key, False)


def _key_int(key: Hashable) -> int:
    """A process-stable integer for a block key (ints as is, bytes by their first 8)."""
    if isinstance(key, int):
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        return int.from_bytes(bytes(key[:8]), "little")
    return hash(key)


_MASK64 = (1 << 64) - 1
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)


class FrequencyAdmission(AdmissionPolicy):
    """Admit blocks whose estimated access count is at least ``threshold``.

    A count-min sketch (4 rows of ``width`` counters) estimates counts; after
    ``10 * width`` recorded accesses every counter is halved, so old popularity fades
    (TinyLFU's reset). Estimates never undercount between resets.
    """

    def __init__(self, width: int, threshold: int = 2) -> None:
        if width < 1 or threshold < 1:
            raise ValueError(f"width and threshold must be >= 1, got {width}, {threshold}")
        self.width = width
        self.threshold = threshold
        self._rows = [[0] * width for _ in _MULTIPLIERS]
        self._num_recorded = 0
        self._reset_after = 10 * width

    def _slots(self, key: Hashable) -> list[int]:
        x = _key_int(key) & _MASK64
        return [(((x ^ (x >> 31)) * m) & _MASK64) % self.width for m in _MULTIPLIERS]

    def estimate(self, key: Hashable) -> int:
        """Estimated accesses of ``key`` since the last halving (upper bound)."""
        return min(row[s] for row, s in zip(self._rows, self._slots(key), strict=True))

    def record_access(self, key: Hashable) -> None:
        for row, s in zip(self._rows, self._slots(key), strict=True):
            row[s] += 1
        self._num_recorded += 1
        if self._num_recorded >= self._reset_after:
            self._num_recorded = 0
            for row in self._rows:
                row[:] = [c >> 1 for c in row]

    def should_admit(self, key: Hashable) -> bool:
        return self.estimate(key) >= self.threshold


class WriteThroughSelective(FrequencyAdmission):
    """HiCache's ``write_through_selective``: store a block once it has been hit
    ``num_hits`` times (default 2, HiCache's threshold), while it is still in HBM."""

    writes_through = True

    def __init__(self, width: int, num_hits: int = 2) -> None:
        super().__init__(width, threshold=num_hits + 1)  # first access + num_hits hits


ADMISSION_POLICIES: Mapping[str, Callable[[int], AdmissionPolicy]] = MappingProxyType(
    {
        "always": lambda capacity_blocks: AlwaysAdmit(),
        "second-hit": lambda capacity_blocks: SecondHitAdmission(max(1, 4 * capacity_blocks)),
        "frequency": lambda capacity_blocks: FrequencyAdmission(max(64, 4 * capacity_blocks)),
        "write-through-selective": lambda capacity_blocks: WriteThroughSelective(
            max(64, 4 * capacity_blocks)
        ),
    }
)
"""Registered admission policies by name; each factory takes the number of blocks the
cache it guards can hold (ghost lists and sketches are sized to 4x that)."""


def make_admission_policy(name: str, capacity_blocks: int) -> AdmissionPolicy:
    """A new admission policy registered as ``name`` for a cache of ``capacity_blocks``.

    Raises ``ValueError`` listing the registered names if ``name`` is unknown.
    """
    factory: Any = ADMISSION_POLICIES.get(name.lower())
    if factory is None:
        raise ValueError(
            f"unknown admission policy {name!r}; choose one of {sorted(ADMISSION_POLICIES)}"
        )
    policy: AdmissionPolicy = factory(capacity_blocks)
    return policy
