"""The fault-injecting tier wrapper: parsing, determinism, every fault counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache.block_format import CorruptBlockError, decode_block, encode_block
from cache.block_hash import BlockHash
from cache.tiers.base import TierError
from cache.tiers.faulty import FaultSpec, FaultyTier, parse_tier_faults
from cache.tiers.lmdb_tier import LmdbTier


def key(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "big"))


def test_parse_the_documented_example():
    specs = parse_tier_faults("ddr:latency_ms=5,drop=0.01;flash:corrupt=0.001")
    assert specs == {
        "ddr": FaultSpec(latency_ms=5, drop=0.01),
        "flash": FaultSpec(corrupt=0.001),
    }
    assert parse_tier_faults("") == {}
    assert parse_tier_faults("ddr:down=1") == {"ddr": FaultSpec(down=True)}


@pytest.mark.parametrize(
    "bad",
    [
        "hbm:drop=0.1",
        "ddr",
        "ddr:drop",
        "ddr:boom=1",
        "ddr:drop=2",
        "ddr:latency_ms=-1",
        "ddr:drop=x",
    ],
)
def test_parse_rejects_malformed_specs(bad):
    with pytest.raises(ValueError, match="tier faults"):
        parse_tier_faults(bad)


def outcomes(path: Path, namespace: str, seed: int) -> list[bool]:
    inner = LmdbTier(path, 64 << 20, namespace)
    tier = FaultyTier(inner, FaultSpec(drop=0.3), seed=seed)
    result = []
    with tier:
        for i in range(200):
            try:
                tier.put(key(i), b"x")
                result.append(True)
            except TierError:
                result.append(False)
        assert tier.fault_counts()["drop"] == result.count(False)
    return result


def test_drops_are_deterministic_per_seed_and_counted(tmp_path):
    first = outcomes(tmp_path / "a", "n", seed=7)
    assert first == outcomes(tmp_path / "b", "n", seed=7)
    assert first != outcomes(tmp_path / "c", "n", seed=8)
    assert 30 < first.count(False) < 90  # about 30% of 200


def test_corrupted_writes_are_caught_by_the_block_checksum(tmp_path):
    block = np.arange(64, dtype=np.float16).reshape(4, 16)
    with FaultyTier(LmdbTier(tmp_path, 64 << 20, "n"), FaultSpec(corrupt=1.0)) as tier:
        tier.put_many([(key(1), encode_block(block, key=key(1)))])
        stored = tier.get(key(1))
        assert stored is not None
        with pytest.raises(CorruptBlockError):
            decode_block(stored, block.shape, block.dtype, key=key(1))
        assert tier.fault_counts()["corrupt"] == 1


def test_a_down_tier_fails_every_operation(tmp_path):
    with FaultyTier(LmdbTier(tmp_path, 64 << 20, "n"), FaultSpec(down=True)) as tier:
        for op in (
            lambda: tier.put(key(1), b"x"),
            lambda: tier.get(key(1)),
            lambda: list(tier.scan()),
            lambda: tier.remove_many([key(1)]),
        ):
            with pytest.raises(TierError, match="down"):
                op()
        assert tier.fault_counts()["down"] == 4
