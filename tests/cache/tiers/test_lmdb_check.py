"""The pre-mapping check of an LMDB environment, on real LMDB files."""

from __future__ import annotations

import os
from pathlib import Path

from cache.block_hash import BlockHash
from cache.tiers.lmdb_check import check_environment, move_aside
from cache.tiers.lmdb_tier import LmdbTier


def make_env(path: Path) -> Path:
    with LmdbTier(path, 64 << 20, "n") as tier:
        tier.put_many([(BlockHash(i.to_bytes(16, "big")), os.urandom(20000)) for i in range(50)])
    return path / "data.mdb"


def test_a_sound_or_missing_environment_passes(tmp_path):
    assert check_environment(tmp_path / "absent") is None
    make_env(tmp_path / "ok")
    assert check_environment(tmp_path / "ok") is None


def test_a_truncated_file_is_caught_before_mapping(tmp_path):
    data = make_env(tmp_path / "env")
    os.truncate(data, data.stat().st_size // 2)
    problem = check_environment(tmp_path / "env")
    assert problem is not None and "truncated" in problem


def test_a_random_header_is_caught(tmp_path):
    data = make_env(tmp_path / "env")
    with open(data, "r+b") as f:
        f.write(os.urandom(64))
    assert check_environment(tmp_path / "env") is not None


def test_a_tiny_file_is_caught(tmp_path):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "data.mdb").write_bytes(b"\0" * 10)
    assert check_environment(tmp_path / "env") is not None


def test_move_aside_keeps_the_files(tmp_path):
    make_env(tmp_path / "flash")
    first = move_aside(tmp_path / "flash")
    make_env(tmp_path / "flash")
    second = move_aside(tmp_path / "flash")
    assert first != second
    assert first.name.startswith("flash.quarantined-") and (first / "data.mdb").exists()
    assert not (tmp_path / "flash").exists()


def test_a_file_another_process_grows_during_the_check_is_not_called_truncated(
    tmp_path, monkeypatch
):
    # A shared flash: the writer (here a second LMDB handle) commits right after every
    # stat of data.mdb, growing the file and writing a newer meta page whose last page
    # lies beyond the size that stat saw. LMDB never shrinks the file, so that is sound.
    data = make_env(tmp_path / "env")
    real_stat = Path.stat
    writer = LmdbTier(tmp_path / "env", 64 << 20, "n")
    commits = iter(range(1000, 1100))

    def stat_then_commit(self: Path, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(self, *args, **kwargs)  # type: ignore[arg-type]
        if self == data:
            writer.put(BlockHash(next(commits).to_bytes(16, "big")), os.urandom(1 << 20))
        return result

    monkeypatch.setattr(Path, "stat", stat_then_commit)
    try:
        assert check_environment(tmp_path / "env") is None
    finally:
        monkeypatch.undo()
        writer.close()
    assert data.stat().st_size > 1 << 20  # the commits did grow it
