"""Load or recompute: how much of a lower-tier prefix hit is worth reloading.

A hit found in DDR or flash is not free: its bytes cross the media and the host link
before the request can compute. Where that costs more than recomputing the same tokens
on the device (a slow media preset such as `nfs`, a fast device, short blocks), loading
makes TTFT worse: SGLang issue 12809 and UCM PR 757 measured exactly that in the field.

`LoadPlanner.blocks_to_load` compares, on the modelled clock, the TTFT of loading the
first `k` lower-tier blocks and recomputing the rest, for `k` at every boundary between
runs of blocks of one tier (all-or-nothing per run, Cake-style head/tail split), and
keeps the cheapest. Loads from different tiers run in parallel (one transfer lane per
tier); the recompute is the chunked prefill of the remaining prompt. The decision uses
modelled costs only, so it is meaningful where steps and transfers run on the device's
clock (`--emulate`, `--pace real`); the numpy model's own compute is far slower than its
modelled time. Pure and cheap (a few cost evaluations per admission); engine thread.

`LoadPlanner.split` goes one step further (Cake, "Compute or load KV cache? Why not
both?"): while the tail of the loaded run `[c, k)` comes up, the device computes the head
`[0, c)` itself, so compute starts before the whole prefix arrived; TTFT is then
`max(compute head, load tail) + compute the rest`, and `c` is found where the two meet.
The scheduler splits only when nothing else runs: in a busy batch a load hides behind the
others' compute, while computing the head would take device time from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cache.records import PrefixHit
from cache.stats import Tier
from npu_sim.cost_model import step_cost
from npu_sim.device import DeviceSpec
from npu_sim.links import TierPaths
from npu_sim.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class LoadPlanner:
    """Modelled TTFT of load-vs-recompute splits for one model on one device."""

    model: ModelConfig  # the shape whose compute the device is charged for
    device: DeviceSpec
    paths: TierPaths
    logical_block_bytes: int
    block_size: int
    chunk_tokens: int  # the step's token budget (long prompts prefill in chunks)

    def plan(self, hit: PrefixHit, num_tokens: int, is_idle: bool) -> tuple[PrefixHit, int]:
        """The part of `hit` worth reloading for a prompt of `num_tokens`, and how many of
        its lower-tier blocks to compute while the others load (0: none). Splits (`split`)
        only on an `is_idle` device: the split trades device time for TTFT, and in a
        busy batch a load hides behind the others' compute (`blocks_to_load`)."""
        if not hit.lower:
            return hit, 0
        tiers = [tier for _, tier in hit.lower]
        head, h = 0, len(hit.hbm_block_ids)
        if is_idle:
            head, k = self.split(h, tiers, num_tokens)
        else:
            k = self.blocks_to_load(h, tiers, num_tokens)
        return PrefixHit(hit.hbm_block_ids, hit.lower[:k]), head

    def load_seconds(self, tiers: Sequence[Tier]) -> float:
        """Modelled time to reload blocks from `tiers` (one entry per block)."""
        per_tier: dict[Tier, int] = {}
        for tier in tiers:
            per_tier[tier] = per_tier.get(tier, 0) + 1
        return max(
            (
                self.paths.seconds(t.value, n * self.logical_block_bytes)
                for t, n in per_tier.items()
            ),
            default=0.0,
        )

    def compute_seconds(self, start: int, num_tokens: int) -> float:
        """Modelled time to prefill positions [start, num_tokens) alone, in chunks."""
        total, pos = 0.0, start
        while pos < num_tokens:
            n = min(self.chunk_tokens, num_tokens - pos)
            total += step_cost(self.model, self.device, [(n, pos + n)]).seconds
            pos += n
        return total

    def blocks_to_load(
        self, num_hbm_blocks: int, lower_tiers: Sequence[Tier], num_tokens: int
    ) -> int:
        """How many leading lower-tier blocks to reload (the rest is recomputed)."""
        if not lower_tiers:
            return 0
        candidates = [0] + [
            k for k in range(1, len(lower_tiers)) if lower_tiers[k] is not lower_tiers[k - 1]
        ]
        candidates.append(len(lower_tiers))
        # On a tie, load: a hit also spares this host's real compute.
        return min(
            candidates,
            key=lambda k: (self.ttft_seconds(num_hbm_blocks, lower_tiers, k, num_tokens), -k),
        )

    def ttft_seconds(
        self, num_hbm_blocks: int, lower_tiers: Sequence[Tier], k: int, num_tokens: int
    ) -> float:
        """Modelled TTFT when the first `k` lower blocks are loaded and the rest computed."""
        start = (num_hbm_blocks + k) * self.block_size
        return self.load_seconds(lower_tiers[:k]) + self.compute_seconds(start, num_tokens)

    def split(
        self, num_hbm_blocks: int, lower_tiers: Sequence[Tier], num_tokens: int
    ) -> tuple[int, int]:
        """`(c, k)`: compute lower-tier blocks `[0, c)` while `[c, k)` load, recompute
        from `k` on; the split with the least modelled TTFT (`c == k` loads nothing)."""
        if not lower_tiers:
            return 0, 0
        candidates = [0] + [
            k for k in range(1, len(lower_tiers)) if lower_tiers[k] is not lower_tiers[k - 1]
        ]
        candidates.append(len(lower_tiers))
        # On a tie, load more: a hit also spares this host's real compute.
        ttft, _, c, k = min(
            (
                self.split_ttft_seconds(num_hbm_blocks, lower_tiers, c, k, num_tokens),
                c - k,
                c,
                k,
            )
            for k in candidates
            for c in [self._meeting_point(num_hbm_blocks, lower_tiers, k)]
        )
        return (c, k) if c < k else (0, 0)

    def split_ttft_seconds(
        self, num_hbm_blocks: int, lower_tiers: Sequence[Tier], c: int, k: int, num_tokens: int
    ) -> float:
        """Modelled TTFT when lower blocks `[0, c)` are computed while `[c, k)` load."""
        start = num_hbm_blocks * self.block_size
        head = self.compute_seconds(start, start + c * self.block_size)
        rest = self.compute_seconds((num_hbm_blocks + k) * self.block_size, num_tokens)
        return max(head, self.load_seconds(lower_tiers[c:k])) + rest

    def _meeting_point(self, num_hbm_blocks: int, lower_tiers: Sequence[Tier], k: int) -> int:
        """The `c` in `[0, k]` where computing the head stops being faster than loading
        the tail (computing grows with `c`, loading shrinks): a binary search."""
        start = num_hbm_blocks * self.block_size
        lo, hi = 0, k
        while lo < hi:
            mid = (lo + hi) // 2
            head = self.compute_seconds(start, start + mid * self.block_size)
            if head >= self.load_seconds(lower_tiers[mid:k]):
                hi = mid
            else:
                lo = mid + 1
        if lo == 0:
            return 0

        # The crossing lies between lo - 1 and lo: take the side with the smaller maximum.
        def worst(c: int) -> float:
            head = self.compute_seconds(start, start + c * self.block_size)
            return max(head, self.load_seconds(lower_tiers[c:k]))

        return lo if worst(lo) < worst(lo - 1) else lo - 1
