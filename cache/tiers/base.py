"""The one interface every lower storage tier (DDR = Redis, flash = LMDB) implements.

Tiers store opaque bytes under :data:`~cache.block_hash.BlockHash` keys; they hold no
policy (capacity, eviction, demotion are the cache manager's).  Values are normally
``cache.block_format`` blocks, but a tier never looks inside them.

Threading: a tier instance is used by one thread at a time (the transfer thread); it
does no locking of its own.  Failure: any store failure (lost connection, LMDB error,
map full) raises :class:`TierError`; a missing key is not a failure (``get`` returns
``None``, ``remove`` is a no-op).  Exceptions raised by a ``consume`` callback
propagate unchanged.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Self, TypeAlias

from cache.block_hash import BlockHash

Buffer: TypeAlias = bytes | memoryview
"""A stored value handed to ``get_many`` consumers: bytes, or a zero-copy view."""

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


class TierError(RuntimeError):
    """An I/O failure of the underlying store; the operation may or may not have applied."""


class TierFullError(TierError):
    """The store refused a write for lack of space (LMDB map full, Redis at maxmemory).

    Nothing of the refused call was written for LMDB (one transaction); for Redis,
    earlier commands of a batch may have been applied.
    """


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is 1-100 chars of ``[A-Za-z0-9_.-]``, else ``ValueError``.

    Restricting the alphabet means no namespace is a prefix-with-separator of another
    (no ``:``) and none needs escaping in Redis glob patterns or LMDB db names.
    """
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"namespace must match [A-Za-z0-9_.-]{{1,100}}, got {namespace!r}")
    return namespace


class StorageTier(ABC):
    """A key/value store for KV blocks.  See the module docstring for the contract."""

    name: str
    """Short human name of the tier (``"ddr"``, ``"flash"``…), for logs and metrics."""

    @abstractmethod
    def contains(self, key: BlockHash) -> bool:
        """Whether ``key`` is stored."""

    @abstractmethod
    def get(self, key: BlockHash) -> bytes | None:
        """The stored value (an owned copy), or ``None`` if ``key`` is absent."""

    @abstractmethod
    def put(self, key: BlockHash, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""

    @abstractmethod
    def remove(self, key: BlockHash) -> None:
        """Delete ``key``; a no-op if it is absent."""

    @abstractmethod
    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        """Yield ``(key, stored size in bytes)`` for every stored key, in no set order.

        Used to rebuild the manager's index at start-up; keys written or removed while
        a scan is running may or may not be listed.  Empty values may be left out
        (a stored block is never empty).
        """

    def scan_keys_of_size(
        self, size: int, other_sizes: list[BlockHash] | None = None
    ) -> list[BlockHash]:
        """Keys whose stored value is ``size`` bytes, in ``scan`` order; the start-up
        rebuild's bulk form of ``scan`` (LMDB overrides it with a vectorised one).
        Keys of any other size are appended to ``other_sizes`` when it is given."""
        found: list[BlockHash] = []
        for key, stored in self.scan():
            if stored == size:
                found.append(key)
            elif other_sizes is not None:
                other_sizes.append(key)
        return found

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources (flushing what must be flushed).  Idempotent."""

    def fault_counts(self) -> dict[str, int]:
        """Faults injected so far, by kind (only fault-injecting wrappers have any).

        May be read from another thread than the one using the tier (a copy is returned).
        """
        return {}

    def contains_many(self, keys: Sequence[BlockHash]) -> list[bool]:
        """``[contains(k) for k in keys]``, in one round trip where the store allows."""
        return [self.contains(k) for k in keys]

    def get_many(
        self, keys: Sequence[BlockHash], consume: Callable[[int, Buffer | None], None]
    ) -> None:
        """Call ``consume(i, buf)`` for each ``keys[i]`` in order; ``buf`` is ``None`` if absent.

        ``buf`` is valid only during that call: a tier may hand out a zero-copy view into
        its own memory (LMDB) that dies when ``get_many`` returns, so ``consume`` must copy
        what it keeps (e.g. decode and ``np.copyto`` into an HBM slot).
        """
        for i, key in enumerate(keys):
            consume(i, self.get(key))

    def get_all(
        self, keys: Sequence[BlockHash], consume: Callable[[list[Buffer | None]], None]
    ) -> None:
        """Call ``consume(bufs)`` once, ``bufs[i]`` being ``keys[i]``'s value (``None``: absent).

        The per-job form of ``get_many``, for a consumer that checks and copies a whole
        batch at once (the reload path). Every ``buf`` is valid only during that call.
        This default runs ``get_many`` and keeps ``bytes`` values as they are (copying
        views); a tier whose views die with its read (LMDB) overrides it to hand them
        out zero-copy.
        """
        bufs: list[Buffer | None] = [None] * len(keys)

        def keep(i: int, buf: Buffer | None) -> None:
            bufs[i] = buf if buf is None or isinstance(buf, bytes) else bytes(buf)

        self.get_many(keys, keep)
        consume(bufs)

    def get_pieces(
        self,
        keys: Sequence[BlockHash],
        piece: int,
        consume: Callable[[int, list[Buffer | None]], None],
    ) -> None:
        """Call ``consume(first, bufs)`` once per piece ``keys[first:first + piece]``, in
        order (``first`` = 0, ``piece``, ``2 * piece``…); ``bufs[i]`` is the value of
        ``keys[first + i]`` (``None``: absent), valid only during that call.

        The reload path's form of ``get_all``: a tier may read the next piece while
        ``consume`` checks and copies this one (Redis: pipelined MGETs on one
        connection), so the store's work overlaps the caller's. If the store fails part
        way, the pieces already consumed stay consumed and ``TierError`` is raised; no
        later piece is consumed. This default hands the pieces of one ``get_all`` over
        in turn. ``ValueError`` if ``piece < 1``.
        """
        if piece < 1:
            raise ValueError(f"piece must be >= 1, got {piece}")

        def split(bufs: list[Buffer | None]) -> None:
            for first in range(0, len(bufs), piece):
                consume(first, bufs[first : first + piece])

        self.get_all(keys, split)

    def put_many(self, items: Sequence[tuple[BlockHash, bytes]]) -> None:
        """Store every ``(key, value)``; one round trip / transaction where the store allows."""
        for key, value in items:
            self.put(key, value)

    def remove_many(self, keys: Sequence[BlockHash]) -> None:
        """Delete every key (absent ones are skipped)."""
        for key in keys:
            self.remove(key)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
