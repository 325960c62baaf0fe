"""Flash tier: KV blocks in an LMDB environment on disk, one sub-database per namespace.

Reads hand out zero-copy ``memoryview``s into LMDB's memory map (``get_many``), so a
reloaded block goes from the page cache to its HBM slot in one copy.  Each batched
call is one transaction.  Contents persist across processes: a new tier on the same
path and namespace sees the old keys (``scan``).

LMDB allows an environment to be open only once per process, so tiers on the same
path (different namespaces) share one environment through a small refcounted
registry; it is the only process-wide state here and exists because LMDB imposes it.

Start-up reads no values (issue #11): every put also writes a 12-byte record
``(value size u32, write sequence u64)`` under the same key in the namespace's
sub-database of a second, small environment under ``<path>/meta``, and ``scan`` reads
only that, oldest write first, so the manager's rebuilt eviction order is the order
blocks were last written. The meta records live in their own file because in the data
file their B-tree pages end up scattered among 16 GB of values: from a cold page cache
a scan of 1M records there took 21.8 s of random reads, while the separate file is
read sequentially first (~50 MB per million blocks). The two environments are not one
transaction: values are committed before their meta records and meta records deleted
before their values, so a crash in between leaves a value without a record, which the
next scan detects (the counts differ) and repairs by the old scan. A namespace written
before this existed is scanned the old way once (reading every value) and its meta
records are written then.

Threading and failures follow :mod:`cache.tiers.base`: one thread at a time per tier
(tiers sharing an environment may run on different threads; LMDB serialises
writers); ``lmdb.Error`` becomes :class:`TierError`, ``MapFullError`` the subclass
:class:`TierFullError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import lmdb
import numpy as np

from cache.block_hash import BlockHash
from cache.tiers.base import Buffer, StorageTier, TierError, TierFullError, check_namespace

MAX_NAMESPACES = 64
"""Sub-databases (namespaces) one environment can hold; fixed when it is opened."""

META_DIR = "meta"
"""Sub-directory of the flash path holding the size/sequence records (its own env)."""

_SCAN_BATCH = 4096


def _meta_map_size(map_size_bytes: int) -> int:
    """Map size of the meta environment: 12-byte records of >= 1 KiB values, with room."""
    return max(64 << 20, map_size_bytes // 64)


_META_DTYPE = np.dtype([("size", "<u4"), ("seq", "<u8")])
"""One meta record: stored value size and write sequence (later write = larger)."""


@contextmanager
def _wrap_errors(what: str) -> Iterator[None]:
    try:
        yield
    except lmdb.MapFullError as exc:
        raise TierFullError(f"lmdb {what} refused, map full: {exc}") from exc
    except lmdb.Error as exc:
        raise TierError(f"lmdb {what} failed: {exc}") from exc


@dataclass(slots=True)
class _SharedEnv:
    env: lmdb.Environment
    map_size_bytes: int
    num_users: int


_registry_lock = threading.Lock()
_open_envs: dict[Path, _SharedEnv] = {}


def _acquire_env(path: Path, map_size_bytes: int) -> lmdb.Environment:
    with _registry_lock:
        shared = _open_envs.get(path)
        if shared is None:
            path.mkdir(parents=True, exist_ok=True)
            with _wrap_errors(f"open {path}"):
                env = lmdb.open(
                    str(path),
                    map_size=map_size_bytes,
                    max_dbs=MAX_NAMESPACES,
                    # No fsync per commit: a crash may lose or tear recent blocks, which
                    # the block checksums catch (the block is dropped and recomputed);
                    # flash is a cache, not the system of record.  close() syncs.
                    sync=False,
                    metasync=False,
                    # Blocks are read at random; readahead would waste page cache.
                    readahead=False,
                    lock=True,
                )
            shared = _open_envs[path] = _SharedEnv(env, map_size_bytes, 0)
        elif shared.map_size_bytes != map_size_bytes:
            raise ValueError(
                f"LMDB env {path} is already open in this process with map_size "
                f"{shared.map_size_bytes}, not {map_size_bytes}"
            )
        shared.num_users += 1
        return shared.env


def _release_env(path: Path) -> None:
    with _registry_lock:
        shared = _open_envs[path]
        shared.num_users -= 1
        if shared.num_users == 0:
            del _open_envs[path]
            with _wrap_errors(f"close {path}"):
                shared.env.close()


def _open_db(env: lmdb.Environment, namespace: str) -> lmdb._Database:
    # mdb_dbi_open must not race another open in the process: hold the registry lock.
    # Through an explicit write transaction: py-lmdb's `open_db` without one waits for
    # the write lock holding the GIL, which deadlocks with a thread of this process that
    # holds a write transaction and needs the GIL to finish it (a lane's put or delete).
    with _registry_lock, _wrap_errors(f"open sub-database {namespace!r}"):
        with env.begin(write=True) as txn:
            return env.open_db(namespace.encode(), txn=txn)


def _read_sequentially(path: Path) -> None:
    """Pull ``path`` into the page cache with large sequential reads (the environment is
    opened without readahead, so a cold B-tree walk would fault in 4 KiB pages at random)."""
    try:
        with path.open("rb", buffering=0) as f:
            buf = bytearray(8 << 20)
            while f.readinto(buf):
                pass
    except OSError:
        pass  # only a speed-up: the scan reads what it needs anyway


class LmdbTier(StorageTier):
    """A :class:`StorageTier` over the ``namespace`` sub-database of the env at ``path``.

    ``path`` is a directory (created if missing).  ``map_size_bytes`` caps the whole
    environment (all namespaces); a put beyond it raises :class:`TierFullError` and changes
    nothing, so the manager should keep its flash budget comfortably below it.  Every
    tier open on one path in this process must pass the same ``map_size_bytes``
    (``ValueError`` otherwise).  ``namespace`` must match ``[A-Za-z0-9_.-]{1,100}``.
    """

    name = "flash"

    def __init__(self, path: Path, map_size_bytes: int, namespace: str) -> None:
        self.namespace = check_namespace(namespace)
        self.path = Path(path).resolve()
        self._closed = False
        self._env = _acquire_env(self.path, map_size_bytes)
        try:
            self._db = _open_db(self._env, namespace)
        except BaseException:
            _release_env(self.path)
            raise
        self._meta_path = self.path / META_DIR
        try:
            self._meta_env = _acquire_env(self._meta_path, _meta_map_size(map_size_bytes))
        except BaseException:
            _release_env(self.path)
            raise
        try:
            self._meta_db = _open_db(self._meta_env, namespace)
        except BaseException:
            _release_env(self._meta_path)
            _release_env(self.path)
            raise

    def _begin(self, *, write: bool = False) -> lmdb.Transaction[memoryview]:
        """A transaction on this namespace whose reads are zero-copy memoryviews."""
        if self._closed:
            raise TierError(f"LMDB tier {self.namespace!r} is closed")
        return self._env.begin(db=self._db, write=write, buffers=True)

    def contains(self, key: BlockHash) -> bool:
        with _wrap_errors("get"), self._begin() as txn:
            return txn.get(key) is not None

    def get(self, key: BlockHash) -> bytes | None:
        with _wrap_errors("get"), self._begin() as txn:
            value = txn.get(key)
            return None if value is None else bytes(value)  # copy out before the txn ends

    def put(self, key: BlockHash, value: bytes) -> None:
        self.put_many([(key, value)])

    def remove(self, key: BlockHash) -> None:
        self.remove_many([key])

    def contains_many(self, keys: Sequence[BlockHash]) -> list[bool]:
        with _wrap_errors("get"), self._begin() as txn:
            return [txn.get(k) is not None for k in keys]

    def get_many(
        self, keys: Sequence[BlockHash], consume: Callable[[int, Buffer | None], None]
    ) -> None:
        """One read transaction; ``consume`` gets memoryviews into the map, valid only
        during its call (the transaction ends when ``get_many`` returns)."""
        with _wrap_errors("begin"):
            txn = self._begin()
        try:
            for i, key in enumerate(keys):
                with _wrap_errors("get"):
                    value = txn.get(key)
                consume(i, value)  # its exceptions propagate unwrapped
        finally:
            txn.abort()  # read-only: abort just releases the snapshot

    def get_all(
        self, keys: Sequence[BlockHash], consume: Callable[[list[Buffer | None]], None]
    ) -> None:
        """One read transaction; ``consume`` gets every value as a memoryview into the
        map at once, valid only during its call."""
        with _wrap_errors("begin"):
            txn = self._begin()
        try:
            with _wrap_errors("get"):
                get = txn.get
                bufs: list[Buffer | None] = [get(key) for key in keys]
            consume(bufs)  # its exceptions propagate unwrapped
        finally:
            txn.abort()  # read-only: abort just releases the snapshot

    def put_many(self, items: Sequence[tuple[BlockHash, bytes]]) -> None:
        """One write transaction: either every item is stored or (on error) none is."""
        if not items:
            return
        with _wrap_errors("put"), self._begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value)
        self._put_meta([(key, len(value)) for key, value in items])

    def remove_many(self, keys: Sequence[BlockHash]) -> None:
        if not keys:
            return
        with _wrap_errors("delete"), self._begin_meta(write=True) as txn:
            for key in keys:
                txn.delete(key)
        with _wrap_errors("delete"), self._begin(write=True) as txn:
            for key in keys:
                txn.delete(key)

    def _begin_meta(self, *, write: bool = False) -> lmdb.Transaction[bytes]:
        if self._closed:
            raise TierError(f"LMDB tier {self.namespace!r} is closed")
        return self._meta_env.begin(db=self._meta_db, write=write)

    def _put_meta(self, sizes: list[tuple[bytes, int]], *, replace_all: bool = False) -> None:
        """Write meta records for ``sizes`` in one transaction, sequenced in the given
        order (``replace_all``: drop every other record of this namespace first)."""
        records = np.zeros(len(sizes), _META_DTYPE)
        records["size"] = [size for _, size in sizes]
        # later writes, even after a restart, sort later
        records["seq"] = np.arange(len(sizes), dtype=np.uint64) + np.uint64(time.time_ns())
        raw = records.tobytes()
        width = _META_DTYPE.itemsize
        with _wrap_errors("put"), self._begin_meta(write=True) as txn:
            if replace_all:
                txn.drop(self._meta_db, delete=False)
            for i, (key, _) in enumerate(sizes):
                txn.put(key, raw[i * width : (i + 1) * width])

    def scan(self) -> Iterator[tuple[BlockHash, int]]:
        """Yield ``(key, value size)`` for every block, least recently written first,
        reading only the meta environment (its file sequentially first, then one read
        transaction over its records)."""
        meta = self._read_meta()
        if meta is None:
            yield from self._scan_values_and_backfill()
            return
        keys, sizes = meta
        yield from zip(keys, sizes.tolist(), strict=True)

    def scan_keys_of_size(
        self, size: int, other_sizes: list[BlockHash] | None = None
    ) -> list[BlockHash]:
        """``scan``'s keys whose value is ``size`` bytes, selected with numpy (others are
        appended to ``other_sizes`` when it is given)."""
        meta = self._read_meta()
        if meta is None:
            pairs = list(self._scan_values_and_backfill())
            if other_sizes is not None:
                other_sizes.extend(key for key, stored in pairs if stored != size)
            return [key for key, stored in pairs if stored == size]
        keys, sizes = meta
        if bool((sizes == size).all()):
            return keys
        matches = (sizes == size).tolist()
        if other_sizes is not None:
            other_sizes.extend(key for key, ok in zip(keys, matches, strict=True) if not ok)
        return [key for key, ok in zip(keys, matches, strict=True) if ok]

    def scan_recorded_keys(self, size: int) -> list[BlockHash]:
        """Keys with a meta record of a ``size``-byte value, least recently written first:
        reads the meta environment only and repairs nothing, so it suits a reader while
        another process writes (records are written after their values and deleted before
        them, so every key listed has its value, bar a crash in between)."""
        meta = self._read_meta(check_count=False)
        if meta is None:  # unreachable without the count check
            return []
        keys, sizes = meta
        if bool((sizes == size).all()):
            return keys
        return [key for key, ok in zip(keys, (sizes == size).tolist(), strict=True) if ok]

    def _read_meta(self, check_count: bool = True) -> tuple[list[BlockHash], np.ndarray] | None:
        """Every key, least recently written first, and its value sizes; ``None`` if the
        meta records do not cover every value (then the values must be scanned; not
        checked without ``check_count``)."""
        num_values = -1
        if check_count:
            with _wrap_errors("scan"), self._begin() as txn:
                num_values = txn.stat(self._db)["entries"]
        _read_sequentially(self._meta_path / "data.mdb")
        with _wrap_errors("scan"), self._begin_meta() as txn:
            if check_count and txn.stat(self._meta_db)["entries"] != num_values:
                return None
            # Keys and records in two C-level passes (no per-entry tuples: at 1M
            # entries building and unzipping pairs cost more than the reads).
            keys = list(txn.cursor().iternext(keys=True, values=False))
            records = b"".join(txn.cursor().iternext(keys=False, values=True))
        meta = np.frombuffer(records, _META_DTYPE)
        order = np.argsort(meta["seq"], kind="stable")
        joined = b"".join(keys)
        width = len(keys[0]) if keys else 0
        if width and len(joined) == width * len(keys) and len(set(map(len, keys))) == 1:
            # all keys one length (block hashes): reorder them as one numpy array,
            # whose tolist() gives bytes back
            packed = np.frombuffer(joined, np.dtype((np.void, width)))
            ordered = packed[order].tolist()
        else:
            ordered = [keys[i] for i in order.tolist()]
        return cast(list[BlockHash], ordered), meta["size"][order]

    def _scan_values_and_backfill(self) -> Iterator[tuple[BlockHash, int]]:
        """The scan of namespaces without (complete) meta records: read every value's
        size, in key order, then write the meta records so the next start is fast."""
        found = list(self._scan_values())
        try:
            self._put_meta([(bytes(k), size) for k, size in found], replace_all=True)
        except TierError:
            pass  # best effort (e.g. map full): the next start scans the values again
        yield from found

    def _scan_values(self) -> Iterator[tuple[BlockHash, int]]:
        """Yield ``(key, value size)`` in key order, in batches of short read transactions
        (a long-lived reader would stop LMDB from reusing freed pages)."""
        after: bytes | None = None
        while True:
            batch: list[tuple[BlockHash, int]] = []
            with _wrap_errors("scan"), self._begin() as txn:
                cursor = txn.cursor()
                found = cursor.set_range(after) if after is not None else cursor.first()
                while found and len(batch) < _SCAN_BATCH:
                    key = bytes(cursor.key())
                    if key != after:
                        batch.append((BlockHash(key), len(cursor.value())))
                    found = cursor.next()
            if not batch:
                return
            yield from batch
            after = batch[-1][0]

    def close(self) -> None:
        """Flush to disk (``sync`` was off for commits) and release the environments."""
        if self._closed:
            return
        self._closed = True
        try:
            with _wrap_errors("sync"):
                self._env.sync(True)
                self._meta_env.sync(True)
        finally:
            _release_env(self._meta_path)
            _release_env(self.path)
