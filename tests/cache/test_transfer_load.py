"""A load job's data path on the transfer lane, over a real LMDB and a real Redis: blocks
are checked and copied in pieces under the load's `LoadGuard`, nothing reaches HBM once
the load is abandoned, even between two pieces of one job, and a store failing part way
through a job keeps the pieces that landed and fails the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import cache.transfer as transfer
from cache.block_format import encode_block, encoded_size
from cache.block_hash import BlockHash
from cache.embedded_redis import EmbeddedRedis
from cache.layout import KVLayout
from cache.stats import Tier, TierOp
from cache.tiers.base import Buffer
from cache.tiers.lmdb_tier import LmdbTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from cache.transfer import TransferWorker
from cache.transfer_jobs import LoadGuard, LoadJob, LoadStatus

LAYOUT = KVLayout("t", num_layers=1, num_kv_heads=1, head_dim=4, block_size=2)


def _store(tier: LmdbTier, n: int) -> tuple[list[BlockHash], list[np.ndarray]]:
    rng = np.random.default_rng(3)
    keys = [BlockHash(bytes([i + 1]) * 16) for i in range(n)]
    blocks = [rng.standard_normal(LAYOUT.block_shape).astype(LAYOUT.np_dtype) for _ in keys]
    tier.put_many([(k, encode_block(b, key=k)) for k, b in zip(keys, blocks, strict=True)])
    return keys, blocks


def _load(
    tier: LmdbTier, keys: list[BlockHash], pool: np.ndarray, guard: LoadGuard
) -> list[LoadStatus]:
    worker = TransferWorker({Tier.FLASH: tier}, LAYOUT, pool)
    try:
        items = [(k, slot, Tier.FLASH) for slot, k in enumerate(keys)]
        worker.submit(LoadJob(1, items, guard))
        assert worker.wait_idle(30)
        (result,) = worker.poll()
        return result.statuses
    finally:
        worker.close()


class HookedRedisTier(RedisTier):
    """A real RedisTier whose `get_pieces` calls `before(first)` and `after(first)` around
    handing each piece to the caller's `consume` (to act at a chosen point of a read)."""

    def __init__(
        self,
        client: Any,
        namespace: str,
        before: Callable[[int], object] = lambda first: None,
        after: Callable[[int], object] = lambda first: None,
    ) -> None:
        super().__init__(client, namespace)
        self._before, self._after = before, after

    def get_pieces(
        self,
        keys: Sequence[BlockHash],
        piece: int,
        consume: Callable[[int, list[Buffer | None]], None],
    ) -> None:
        def hooked(first: int, bufs: list[Buffer | None]) -> None:
            self._before(first)
            consume(first, bufs)
            self._after(first)

        super().get_pieces(keys, piece, hooked)


def _damage(tier: LmdbTier, key: BlockHash) -> None:
    """Flip the last payload byte of `key`'s stored block, behind the tier's back."""
    with tier._env.begin(db=tier._db, write=True) as txn:
        stored = txn.get(key)
        assert stored is not None
        damaged = bytearray(stored)
        damaged[-1] ^= 0xFF
        txn.put(key, bytes(damaged))


def test_a_job_larger_than_a_chunk_lands_whole_and_flags_only_the_bad_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "COPY_CHUNK_BLOCKS", 2)
    with LmdbTier(tmp_path, 16 << 20, "flash") as tier:
        keys, blocks = _store(tier, 5)
        _damage(tier, keys[3])  # its payload's last byte
        pool = np.zeros((6, *LAYOUT.block_shape), LAYOUT.np_dtype)
        statuses = _load(tier, [*keys, BlockHash(b"\x99" * 16)], pool, LoadGuard(6))
    ok, corrupt, missing = LoadStatus.OK, LoadStatus.CORRUPT, LoadStatus.MISSING
    assert statuses == [ok, ok, ok, corrupt, ok, missing]
    for slot in (0, 1, 2, 4):
        assert pool[slot].tobytes() == blocks[slot].tobytes()


def test_nothing_is_copied_after_the_load_is_abandoned_between_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "COPY_CHUNK_BLOCKS", 2)
    guard = LoadGuard(5)

    class DecodeThenAbandon(transfer.BlockDecoder):
        def __call__(self, *args: Any) -> list[bool]:
            ok = super().__call__(*args)
            guard.abandoned = True  # as if abandon() ran as soon as this chunk let go
            return ok

    monkeypatch.setattr(transfer, "BlockDecoder", DecodeThenAbandon)
    with LmdbTier(tmp_path, 16 << 20, "flash") as tier:
        keys, blocks = _store(tier, 5)
        pool = np.zeros((5, *LAYOUT.block_shape), LAYOUT.np_dtype)
        _load(tier, keys, pool, guard)
    assert pool[0].tobytes() == blocks[0].tobytes() and pool[1].tobytes() == blocks[1].tobytes()
    assert not pool[2:].any()  # the later chunks never reached HBM
    assert guard.statuses == [LoadStatus.MISSING] * 5  # abandoned: nothing was reported OK


def test_a_redis_error_after_the_first_piece_lands_that_piece_and_fails_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DDR load is read in pipelined MGET pieces; the lane's connection is killed
    (CLIENT KILL, a real Redis) once the first piece is handed over: the first piece's
    blocks land with their exact bytes, every later block is an I/O error (recomputed),
    none is marked OK with bytes it never got."""
    block_bytes = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
    monkeypatch.setattr(transfer, "READ_PIECE_BYTES", 4 * block_bytes)  # 4 blocks a piece
    server = EmbeddedRedis(tmp_path / "redis", maxmemory_bytes=4 << 20).start()
    admin = redis.Redis.from_url(server.url)

    def kill_after_first(first: int) -> None:
        if first == 0:
            admin.client_kill_filter(_type="normal", skipme=True)

    tier = HookedRedisTier(connect_redis(server.url), "ddr", after=kill_after_first)
    try:
        rng = np.random.default_rng(4)
        keys = [BlockHash(bytes([i + 1]) * 16) for i in range(12)]
        blocks = [rng.standard_normal(LAYOUT.block_shape).astype(LAYOUT.np_dtype) for _ in keys]
        tier.put_many([(k, encode_block(b, key=k)) for k, b in zip(keys, blocks, strict=True)])
        pool = np.zeros((12, *LAYOUT.block_shape), LAYOUT.np_dtype)
        worker = TransferWorker({Tier.DDR: tier}, LAYOUT, pool)
        try:
            items = [(k, slot, Tier.DDR) for slot, k in enumerate(keys)]
            worker.submit(LoadJob(1, items, LoadGuard(12)))
            assert worker.wait_idle(30)
            (result,) = worker.poll()
        finally:
            worker.close()
    finally:
        tier.close()
        admin.close()
        server.stop()
    assert result.statuses == [LoadStatus.OK] * 4 + [LoadStatus.IO_ERROR] * 8
    assert result.failures == [(Tier.DDR, TierOp.LOAD)]
    for slot in range(4):
        assert pool[slot].tobytes() == blocks[slot].tobytes()


def test_an_abandoned_redis_load_reads_no_further_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Abandoned once its first piece is copied, a DDR load stops reading: no later
    piece is handed over (let alone copied), and the tier's next read, on a fresh
    connection, returns right values (no reply of the dropped MGETs is taken for it)."""
    block_bytes = encoded_size(LAYOUT.block_shape, LAYOUT.np_dtype)
    monkeypatch.setattr(transfer, "READ_PIECE_BYTES", 4 * block_bytes)  # 4 blocks a piece
    guard = LoadGuard(12)
    firsts: list[int] = []

    def abandon(first: int) -> None:
        guard.abandoned = True  # as if abandon() ran as soon as this piece let go

    server = EmbeddedRedis(tmp_path / "redis", maxmemory_bytes=4 << 20).start()
    tier = HookedRedisTier(connect_redis(server.url), "ddr", before=firsts.append, after=abandon)
    try:
        rng = np.random.default_rng(5)
        keys = [BlockHash(bytes([i + 1]) * 16) for i in range(12)]
        blocks = [rng.standard_normal(LAYOUT.block_shape).astype(LAYOUT.np_dtype) for _ in keys]
        stored = [encode_block(b, key=k) for k, b in zip(keys, blocks, strict=True)]
        tier.put_many(list(zip(keys, stored, strict=True)))
        pool = np.zeros((12, *LAYOUT.block_shape), LAYOUT.np_dtype)
        worker = TransferWorker({Tier.DDR: tier}, LAYOUT, pool)
        try:
            worker.submit(LoadJob(1, [(k, slot, Tier.DDR) for slot, k in enumerate(keys)], guard))
            assert worker.wait_idle(30)
            (result,) = worker.poll()
        finally:
            worker.close()
        assert firsts == [0, 4]  # the second piece was handed over, and refused
        assert result.error is None
        assert pool[:4].tobytes() == np.stack(blocks[:4]).tobytes()
        assert not pool[4:].any()
        again: list[bytes] = []
        tier.get_pieces(keys[::-1], 4, lambda _, bufs: again.extend(bytes(b) for b in bufs if b))
        assert again == stored[::-1]
    finally:
        tier.close()
        server.stop()


def test_a_load_from_two_tiers_lands_each_block_and_flags_only_the_bad_one(
    tmp_path: Path,
) -> None:
    """A job whose blocks alternate between two tiers runs one part per lane; each
    block's status is its own (the lane marks a non-contiguous run of arrivals)."""
    with (
        LmdbTier(tmp_path / "a", 16 << 20, "ddr") as ddr,
        LmdbTier(tmp_path / "b", 16 << 20, "flash") as flash,
    ):
        keys, blocks = _store(flash, 6)
        for i in (0, 2, 4):  # the even blocks live in the other tier
            ddr.put(keys[i], flash.get(keys[i]) or b"")
        _damage(flash, keys[3])
        pool = np.zeros((6, *LAYOUT.block_shape), LAYOUT.np_dtype)
        worker = TransferWorker({Tier.DDR: ddr, Tier.FLASH: flash}, LAYOUT, pool)
        try:
            items = [(k, 5 - i, Tier.DDR if i % 2 == 0 else Tier.FLASH) for i, k in enumerate(keys)]
            worker.submit(LoadJob(1, items, LoadGuard(6)))
            assert worker.wait_idle(30)
            (result,) = worker.poll()
        finally:
            worker.close()
    ok, corrupt = LoadStatus.OK, LoadStatus.CORRUPT
    assert result.statuses == [ok, ok, ok, corrupt, ok, ok]
    for i in (0, 1, 2, 4, 5):
        assert pool[5 - i].tobytes() == blocks[i].tobytes()
