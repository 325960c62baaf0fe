"""Deterministic fault injection around any `StorageTier`, through the real tier contract.

`--tier-faults 'ddr:latency_ms=5,drop=0.01;flash:corrupt=0.001'` wraps each named tier
in a `FaultyTier`. Kinds, per operation (a batched call is one operation):

  * ``latency_ms=X``: sleep X ms before every operation (a slow store);
  * ``drop=P``: with probability P the operation fails with `TierError` (nothing done);
  * ``corrupt=P``: with probability P per value written, one byte of it is flipped before
    it is stored (the block checksum must catch it on reload);
  * ``down=1``: every operation fails with `TierError` (a dead store).

Decisions come from a `random.Random` seeded with the seed and the tier's name, so the
same seed and the same sequence of operations inject the same faults. Injected faults
are counted by kind (`fault_counts()`, exported as `tierkv:tier_faults_injected_total`).
Threading and failures follow `cache.tiers.base`; the counters may be read from any
thread.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cache.block_hash import BlockHash
from cache.tiers.base import Buffer, StorageTier, TierError

FAULT_KINDS = ("latency_ms", "drop", "corrupt", "down")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Faults of one tier."""

    latency_ms: float = 0.0
    drop: float = 0.0
    corrupt: float = 0.0
    down: bool = False


def parse_tier_faults(text: str) -> dict[str, FaultSpec]:
    """Parse ``'ddr:latency_ms=5,drop=0.01;flash:corrupt=0.001'``; ValueError if malformed."""
    specs: dict[str, FaultSpec] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        tier, sep, body = part.partition(":")
        tier = tier.strip()
        if not sep or tier not in ("ddr", "flash"):
            raise ValueError(f"tier faults: expected 'ddr:...' or 'flash:...', got {part!r}")
        values: dict[str, float] = {}
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, eq, raw = item.partition("=")
            name = name.strip()
            if not eq or name not in FAULT_KINDS:
                raise ValueError(f"tier faults: unknown fault {item!r}; kinds: {FAULT_KINDS}")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"tier faults: {item!r} needs a number") from None
            if value < 0 or (name in ("drop", "corrupt") and value > 1):
                raise ValueError(f"tier faults: {item!r} is out of range")
            values[name] = value
        specs[tier] = FaultSpec(
            latency_ms=values.get("latency_ms", 0.0),
            drop=values.get("drop", 0.0),
            corrupt=values.get("corrupt", 0.0),
            down=values.get("down", 0.0) >= 1,
        )
    return specs


class FaultyTier(StorageTier):
    """Wraps `inner`, injecting the faults of `spec`. Owns `inner` (closes it)."""

    def __init__(self, inner: StorageTier, spec: FaultSpec, seed: int = 0) -> None:
        self.inner = inner
        self.spec = spec
        self.name = inner.name
        self._rng = random.Random(seed * 1_000_003 + zlib.crc32(inner.name.encode()))
        # Every kind present up front: readers on other threads copy a dict of fixed size.
        self._counts: dict[str, int] = {"latency": 0, "drop": 0, "corrupt": 0, "down": 0}

    def fault_counts(self) -> dict[str, int]:
        return dict(self._counts)

    def _count(self, kind: str) -> None:
        self._counts[kind] += 1

    def _before(self, what: str) -> None:
        """Latency, then down/drop: called once per operation."""
        if self.spec.latency_ms > 0:
            self._count("latency")
            time.sleep(self.spec.latency_ms / 1000)
        if self.spec.down:
            self._count("down")
            raise TierError(f"injected fault: {self.name} tier is down ({what})")
        if self.spec.drop > 0 and self._rng.random() < self.spec.drop:
            self._count("drop")
            raise TierError(f"injected fault: {self.name} {what} dropped")

    def _maybe_corrupt(self, value: bytes) -> bytes:
        if self.spec.corrupt > 0 and value and self._rng.random() < self.spec.corrupt:
            self._count("corrupt")
            damaged = bytearray(value)
            damaged[self._rng.randrange(len(damaged))] ^= 0xFF
            return bytes(damaged)
        return value

    def contains(self, key: BlockHash) -> bool:
        self._before("contains")
        return self.inner.contains(key)

    def get(self, key: BlockHash) -> bytes | None:
        self._before("get")
        return self.inner.get(key)

    def put(self, key: BlockHash, value: bytes) -> None:
        self._before("put")
        self.inner.put(key, self._maybe_corrupt(value))

    def remove(self, key: BlockHash) -> None:
        self._before("remove")
        self.inner.remove(key)

    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        self._before("scan")
        return self.inner.scan()

    def scan_keys_of_size(
        self, size: int, other_sizes: list[BlockHash] | None = None
    ) -> list[BlockHash]:
        self._before("scan")  # the inner tier's own (fast) bulk scan, one fault draw
        return self.inner.scan_keys_of_size(size, other_sizes)

    def close(self) -> None:
        self.inner.close()

    def contains_many(self, keys: Sequence[BlockHash]) -> list[bool]:
        self._before("contains_many")
        return self.inner.contains_many(keys)

    def get_many(
        self, keys: Sequence[BlockHash], consume: Callable[[int, Buffer | None], None]
    ) -> None:
        self._before("get_many")
        self.inner.get_many(keys, consume)

    def put_many(self, items: Sequence[tuple[BlockHash, bytes]]) -> None:
        self._before("put_many")
        self.inner.put_many([(k, self._maybe_corrupt(v)) for k, v in items])

    def remove_many(self, keys: Sequence[BlockHash]) -> None:
        self._before("remove_many")
        self.inner.remove_many(keys)
