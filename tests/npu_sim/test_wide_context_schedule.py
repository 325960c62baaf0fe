"""Kept decode contexts under a random serving schedule never change a bit.

A seeded schedule does what the server's engine does to one counted pool: sequences
arrive (chunked prefills, some on another sequence's cached first block), decode in
batches of changing order and membership, finish and free blocks that new sequences
then overwrite, are reloaded into other slots (blocks written whole, as a transfer lane
does), have a block overwritten in place with other bytes, and are preempted and
recomputed. They also rewind a few tokens and later jump forward again over positions
the pool still holds (`SeqChunk` allows both; today's scheduler does neither). Each step
runs on a verifying model over the counted pool and on a model without kept contexts
over a bare copy: logits and pool bytes must match every step, and the verifying model
raises if any kept context differs from the pool's bytes.

Each of these broken variants of `WideContext` fails it (checked by hand): a patch that
drops V, a gather that ignores generations, one that ignores the offsets a column was
widened for (one seed of three), a patch that ignores the generation before the write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from npu_sim.kv_pool import KVBlockPool
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.wide_context import WideContext
from tests.npu_sim.pools import BLOCK_SIZE

NUM_BLOCKS = 96
MAX_BLOCKS = 10  # per sequence: 160 tokens
STEPS = 60


@dataclass
class _Seq:
    tokens: list[int]  # every token whose KV is (or is being) in the pool
    table: list[int]
    key: str | None
    done: int = 0  # tokens whose KV is in the pool
    high: int = 0  # the most tokens it ever had in these blocks
    shared_first: bool = False  # block 0 belongs to another sequence
    owned: list[int] = field(default_factory=list)


class _Schedule:
    """The two pools and the sequences; every write goes to both pools."""

    def __init__(
        self, cached: Model, uncached: Model, rng: random.Random, reuse: bool = False
    ) -> None:
        self.cached, self.uncached, self.rng = cached, uncached, rng
        # reuse: most arrivals keyed and on a cached first block (kept rows taken by prefix)
        self.share_p, self.key_p = (0.8, 1.0) if reuse else (0.4, 0.5)
        shape = cached.kv_pool_shape(NUM_BLOCKS, BLOCK_SIZE)
        self.pool = KVBlockPool(shape, cached.config.kv_dtype)
        self.reference = np.zeros(shape, dtype=cached.config.kv_dtype)
        self.free = list(range(NUM_BLOCKS))
        self.seqs: dict[str, _Seq] = {}
        self.refs = [0] * NUM_BLOCKS  # sequences holding each block
        self.made = 0
        # First blocks of finished sequences, still cached (free but not yet reused): a
        # new sequence may hit them, as the next turn hits what a finished one left.
        self.cached_firsts: dict[int, list[int]] = {}

    def take(self, n: int) -> list[int] | None:
        if len(self.free) < n:
            return None
        blocks = [self.free.pop() for _ in range(n)]  # LIFO: freed blocks are reused first
        for b in blocks:
            self.refs[b] += 1
            self.cached_firsts.pop(b, None)  # to be rewritten
        return blocks

    def release(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self.free.append(b)

    def arrive(self) -> None:
        prompt = [self.rng.randrange(256) for _ in range(self.rng.randint(2, 60))]
        donors = [
            (s.table[0], s.tokens[:BLOCK_SIZE]) for s in self.seqs.values() if s.done >= BLOCK_SIZE
        ]
        donors += list(self.cached_firsts.items())
        # A prefix-cache hit on another sequence's first block, live or finished.
        donor = self.rng.choice(donors) if donors and self.rng.random() < self.share_p else None
        if donor is not None:
            if donor[0] in self.cached_firsts:  # claimed before `take` can reuse it
                del self.cached_firsts[donor[0]]
                self.free.remove(donor[0])
            self.refs[donor[0]] += 1
        blocks = self.take(MAX_BLOCKS - 1 if donor else MAX_BLOCKS)
        if blocks is None:
            if donor is not None:
                self.release([donor[0]])
            return
        name = f"s{self.made}"
        self.made += 1
        key = name if self.rng.random() < self.key_p else None
        seq = _Seq(prompt, blocks, key, owned=list(blocks))
        if donor is not None:
            first, tokens = donor
            seq.tokens = tokens + prompt
            seq.table = [first, *blocks]
            seq.owned = [first, *blocks]
            seq.done, seq.shared_first = BLOCK_SIZE, True
        self.seqs[name] = seq

    def reload_elsewhere(self, seq: _Seq) -> None:
        """Move a sequence's full own blocks to other slots, bytes copied whole."""
        first = 1 if seq.shared_first else 0
        full = seq.done // BLOCK_SIZE
        if full <= first:
            return
        new = self.take(full - first)
        if new is None:
            return
        old = seq.table[first:full]
        values = self.pool.kv[old].copy()
        self.pool.write_blocks(np.array(new), values)
        self.reference[new] = values
        seq.table[first:full] = new
        seq.owned = [b for b in seq.owned if b not in old] + new
        self.release(old)

    def overwrite(self, seq: _Seq) -> None:
        """Land another block's bytes in one of the sequence's own blocks, in place."""
        own = seq.table[1:] if seq.shared_first else seq.table
        target = self.rng.choice(own[: -(-max(seq.done, 1) // BLOCK_SIZE)] or own[:1])
        values = self.pool.kv[[self.rng.randrange(NUM_BLOCKS)]].copy()
        self.pool.write_blocks(np.array([target]), values)
        self.reference[[target]] = values

    def rewind(self, seq: _Seq) -> None:
        """Forget the last few tokens; decoding goes on from the earlier position."""
        floor = BLOCK_SIZE if seq.shared_first else 1
        back = min(self.rng.randint(1, 20), seq.done - floor)
        if back > 0:
            seq.done -= back
            del seq.tokens[seq.done :]

    def jump(self, seq: _Seq) -> None:
        """Go forward again to the longest context it had: the pool holds those
        positions' bytes (whatever was written there last), the kept columns may not."""
        seq.tokens += [self.rng.randrange(256) for _ in range(seq.high - seq.done)]
        seq.done = seq.high

    def preempt(self, seq: _Seq) -> None:
        """Drop a sequence's KV; it is recomputed from its tokens into new blocks."""
        self.release(seq.owned)
        blocks = self.take(MAX_BLOCKS)
        if blocks is None:  # no room now: it finishes instead
            del self.seqs[next(k for k, s in self.seqs.items() if s is seq)]
            if seq.key is not None:
                self.cached.release([seq.key])
            return
        seq.table, seq.owned, seq.done, seq.shared_first = blocks, list(blocks), 0, False
        seq.high = 0

    def step(self) -> None:
        rng = self.rng
        if rng.random() < 0.4 and len(self.seqs) < 6:
            self.arrive()
        for name, seq in list(self.seqs.items()):
            if seq.done >= len(seq.tokens) and rng.random() < 0.08:
                self.release(seq.owned)
                del self.seqs[name]
                first = seq.table[0]
                if seq.done >= BLOCK_SIZE and self.refs[first] == 0:
                    self.cached_firsts[first] = seq.tokens[:BLOCK_SIZE]
                if seq.key is not None:  # its row may go to a sequence on its blocks
                    self.cached.release([seq.key])
            elif rng.random() < 0.08:
                self.reload_elsewhere(seq)
            elif rng.random() < 0.04:
                self.overwrite(seq)
            elif rng.random() < 0.04 and seq.done == len(seq.tokens):
                self.rewind(seq)
            elif rng.random() < 0.1 and seq.high > seq.done == len(seq.tokens):
                self.jump(seq)
            elif rng.random() < 0.03:
                self.preempt(seq)
        batch = []
        for seq in rng.sample(list(self.seqs.values()), len(self.seqs)):
            if seq.done < len(seq.tokens):  # prefill, in a chunk of random size
                n = min(rng.randint(1, 40), len(seq.tokens) - seq.done)
                chunk = SeqChunk(seq.tokens[seq.done : seq.done + n], seq.done, seq.table)
            elif seq.done < MAX_BLOCKS * BLOCK_SIZE and rng.random() < 0.85:
                seq.tokens.append(rng.randrange(256))
                chunk = SeqChunk([seq.tokens[-1]], seq.done, seq.table, seq_key=seq.key)
            else:
                continue
            seq.done += len(chunk.token_ids)
            seq.high = max(seq.high, seq.done)
            batch.append(chunk)
        expected = self.uncached.forward(batch, self.reference)
        got = self.cached.forward(batch, self.pool)
        assert got.tobytes() == expected.tobytes()
        assert self.pool.kv.tobytes() == self.reference.tobytes()


@pytest.mark.parametrize(
    ("seed", "wide_context_bytes"),
    [(0, 512 * 1024**2), (1, 512 * 1024**2), (2, 1_000_000)],  # the last: a tight bound
)
def test_a_random_serving_schedule_matches_widening_from_scratch(
    tiny_config: ModelConfig, seed: int, wide_context_bytes: int
) -> None:
    cached = Model(tiny_config, wide_context_bytes=wide_context_bytes, verify_wide_context=True)
    uncached = Model(tiny_config, wide_context_bytes=0)
    schedule = _Schedule(cached, uncached, random.Random(seed))
    for _ in range(STEPS):
        schedule.step()
    assert cached._wide.num_bytes > 0  # noqa: SLF001 - contexts were kept, so verified


@pytest.mark.parametrize("seed", [0, 3])
def test_kept_rows_taken_by_prefix_in_a_random_schedule_match_too(
    tiny_config: ModelConfig, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most arrivals keyed and on a finished sequence's cached first block, so new
    sequences take released rows by prefix (`WideContext.assign_rows`); the test fails if
    none did (seeds chosen to have some: 4 and 2 such takes)."""
    real = WideContext._holding_most  # noqa: SLF001 - counting what the step did
    takes: list[bool] = []

    def counting(self: WideContext, *args: Any) -> int | None:
        row = real(self, *args)
        takes.append(row is not None)
        return row

    monkeypatch.setattr(WideContext, "_holding_most", counting)
    cached = Model(tiny_config, verify_wide_context=True)
    uncached = Model(tiny_config, wide_context_bytes=0)
    schedule = _Schedule(cached, uncached, random.Random(seed), reuse=True)
    for _ in range(STEPS):
        schedule.step()
    assert sum(takes) > 0
