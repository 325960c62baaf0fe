"""LMDB-specific behaviour: persistence, zero-copy reads, map full, shared environments."""

from __future__ import annotations

from pathlib import Path

import pytest

import cache.tiers.lmdb_tier as lmdb_tier
from cache.block_hash import BlockHash
from cache.tiers.base import Buffer, TierError, TierFullError
from cache.tiers.lmdb_tier import LmdbTier

MAP_SIZE = 16 << 20


def key(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "big"))


def test_persists_across_reopen(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        tier.put_many([(key(i), bytes([i]) * (i + 1)) for i in range(5)])
        tier.remove(key(0))
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as reopened:
        assert dict(reopened.scan()) == {key(i): i + 1 for i in range(1, 5)}
        assert reopened.get(key(3)) == b"\x03" * 4
    with LmdbTier(tmp_path, MAP_SIZE, "other") as other:
        assert list(other.scan()) == []


def test_get_many_hands_out_read_only_memoryviews(tmp_path: Path) -> None:
    seen: list[object] = []

    def consume(i: int, buf: Buffer | None) -> None:
        assert isinstance(buf, memoryview)
        assert buf.readonly
        assert bytes(buf) == b"payload"
        seen.append(i)

    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        tier.put(key(1), b"payload")
        tier.get_many([key(1), key(1)], consume)
    assert seen == [0, 1]


def test_map_full_raises_tier_error_and_changes_nothing(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, 1 << 20, "flash") as tier:
        tier.put(key(1), b"small")
        with pytest.raises(TierFullError, match="MDB_MAP_FULL"):
            tier.put(key(2), b"x" * (2 << 20))
        with pytest.raises(TierFullError):
            tier.put_many([(key(3), b"ok"), (key(4), b"y" * (2 << 20))])
        assert tier.contains_many([key(1), key(2), key(3), key(4)]) == [True, False, False, False]
        tier.put(key(5), b"still writable")
        assert tier.get(key(5)) == b"still writable"


def test_namespaces_share_one_environment(tmp_path: Path) -> None:
    a = LmdbTier(tmp_path, MAP_SIZE, "a")
    b = LmdbTier(tmp_path, MAP_SIZE, "b")
    a.put(key(1), b"a")
    a.close()
    b.put(key(1), b"b")  # b's environment survives a's close
    b.close()
    with LmdbTier(tmp_path, MAP_SIZE, "a") as again:
        assert again.get(key(1)) == b"a"


def test_same_path_needs_same_map_size(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, MAP_SIZE, "a"):
        with pytest.raises(ValueError, match="map_size"):
            LmdbTier(tmp_path, 2 * MAP_SIZE, "b")


def test_too_many_namespaces_raises_tier_error_and_releases(tmp_path: Path) -> None:
    tiers = [LmdbTier(tmp_path, MAP_SIZE, f"ns{i}") for i in range(lmdb_tier.MAX_NAMESPACES)]
    with pytest.raises(TierError):
        LmdbTier(tmp_path, MAP_SIZE, "one-too-many")
    for tier in tiers:
        tier.close()
    with LmdbTier(tmp_path, MAP_SIZE, "ns0") as tier:  # env fully released and reopened
        assert list(tier.scan()) == []


def test_scan_crosses_batch_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdb_tier, "_SCAN_BATCH", 3)
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        tier.put_many([(key(i), b"v" * i) for i in range(1, 11)])
        listed = list(tier.scan())
    assert listed == [(key(i), i) for i in range(1, 11)]


def test_closed_tier_raises_tier_error(tmp_path: Path) -> None:
    tier = LmdbTier(tmp_path, MAP_SIZE, "flash")
    tier.close()
    with pytest.raises(TierError):
        tier.get(key(1))


def test_closed_tier_raises_even_while_env_is_shared(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, MAP_SIZE, "b"):
        tier = LmdbTier(tmp_path, MAP_SIZE, "a")
        tier.close()
        with pytest.raises(TierError, match="closed"):
            tier.put(key(1), b"x")


def test_scan_lists_blocks_least_recently_written_first(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        tier.put_many([(key(i), b"v" * i) for i in (5, 1, 3)])
        tier.put(key(2), b"vv")
        tier.put(key(5), b"v" * 5)  # rewritten: now the most recent
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as reopened:
        assert list(reopened.scan()) == [(key(1), 1), (key(3), 3), (key(2), 2), (key(5), 5)]


def test_scan_reads_meta_records_not_values(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        tier.put_many([(key(1), b"a" * 10), (key(2), b"b" * 20)])
        # Change a value behind the tier's back: the scan still reports the size in
        # its meta record, so it did not look at the value.
        with tier._env.begin(db=tier._db, write=True) as txn:
            txn.put(key(2), b"c" * 7)
        assert dict(tier.scan()) == {key(1): 10, key(2): 20}


def test_namespace_without_meta_records_is_scanned_once_and_backfilled(tmp_path: Path) -> None:
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        # Written as before meta records existed: values only.
        with tier._env.begin(db=tier._db, write=True) as txn:
            for i in (3, 1, 2):
                txn.put(key(i), b"x" * i)
        assert list(tier.scan()) == [(key(1), 1), (key(2), 2), (key(3), 3)]
        with tier._meta_env.begin(db=tier._meta_db) as txn:
            assert txn.stat(tier._meta_db)["entries"] == 3
        tier.remove(key(2))
        assert dict(tier.scan()) == {key(1): 1, key(3): 3}


def test_a_readers_keys_only_scan_lists_recorded_keys_and_repairs_nothing(tmp_path: Path) -> None:
    """A shared flash's follower re-reads while the writer may be between a value's
    commit and its record: it must neither read every value nor rewrite the records."""
    with LmdbTier(tmp_path, MAP_SIZE, "flash") as tier:
        tier.put_many([(key(2), b"b" * 8), (key(1), b"a" * 8), (key(3), b"c" * 5)])
        with tier._env.begin(db=tier._db, write=True) as txn:
            txn.put(key(4), b"d" * 8)  # a value whose record is not written yet
        assert tier.scan_recorded_keys(8) == [key(2), key(1)]  # oldest write first
        with tier._meta_env.begin(db=tier._meta_db) as txn:
            assert txn.stat(tier._meta_db)["entries"] == 3  # nothing backfilled


_OPEN_WHILE_WRITING = """
import sys, threading
from pathlib import Path
from cache.tiers.lmdb_tier import LmdbTier

path = Path(sys.argv[1])
writer = LmdbTier(path, 1 << 26, "w")
stop = threading.Event()

def write() -> None:  # a lane: write transactions with Python work inside them
    i = 0
    while not stop.is_set():
        writer.put_many([(bytes([i % 256]) * 16, b"v" * 64) for _ in range(50)])
        i += 1

thread = threading.Thread(target=write)
thread.start()
for n in range(30):  # other tiers of the same environment open meanwhile
    LmdbTier(path, 1 << 26, f"ns{n}").close()
stop.set()
thread.join()
writer.close()
print("ok")
"""


def test_a_tier_opens_while_another_tier_of_its_environment_writes(tmp_path: Path) -> None:
    # py-lmdb's open_db without a transaction waited for the write lock holding the GIL,
    # so it deadlocked with a thread of the same process inside a write transaction (seen
    # as a hung CI run). Run in a child process: a deadlock cannot be interrupted here.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _OPEN_WHILE_WRITING, str(tmp_path / "env")],
        capture_output=True,
        text=True,
        timeout=120,  # a hang detector, not a speed check: the run takes well under 1 s
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
