"""Runs model steps on the simulated NPU: forward, sample, and pace to the device.

A `StepModel` (the exact numpy `Model`, or the `EmulatedModel` of a real shape) produces
the tokens and KV bytes; the cost model says how long the step would take on the
simulated device; with `Pace.REAL` the executor sleeps until the
step has lasted at least that long. That sleep *is* the device simulation: wall-clock
behaviour (latency, throughput, queueing) then looks like the modelled accelerator as long
as numpy on the host is faster than the modelled device.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from npu_sim.arbiter import SharedCores
from npu_sim.cost_model import StepCost, step_cost
from npu_sim.device import DeviceSpec
from npu_sim.model import SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.sampling import Sampler

# With Pace.REAL a step ends when the modelled clock says, and lateness (a sleep that
# woke late on a busy host, a step whose host compute outran its modelled time) is made
# up by shortening the next steps' waits, so busy wall time tracks modelled time over a
# run rather than drifting by the host's scheduling latency on every step. Capped at
# about ten decode steps, so that one long stall is not repaid by a long burst of
# back-to-back steps (measured: 4 replicas on a CPU-starved host, wall/modelled 1.70-1.76
# with a 20 ms cap, 1.34-1.45 with 250 ms).
MAX_LATENESS = 0.25


class StepModel(Protocol):
    """What the executor runs: `npu_sim.model.Model` and `npu_sim.emulated.EmulatedModel`.

    `forward` writes every new token's KV into the pool and returns one row of logits over
    the tokenizer's vocabulary per chunk with `needs_logits`, in batch order (`ValueError`
    for an invalid batch). `numerics_id` names everything its KV bytes and tokens depend
    on (it goes into every block hash). One thread at a time.
    """

    @property
    def numerics_id(self) -> str: ...

    def forward(self, batch: Sequence[SeqChunk], kv_pool: np.ndarray) -> np.ndarray: ...


class Pace(enum.Enum):
    """REAL: steps end on the modelled device clock (see MAX_LATENESS). NONE: flat out."""

    REAL = "real"
    NONE = "none"


@dataclass(slots=True)
class StepSequence:
    """One sequence's share of a step (see `SeqChunk` for token_ids/start_pos/block_table).

    sampler: samples the token after the chunk's last token; None for a mid-prefill chunk
    (nothing is sampled and no logits are computed).
    """

    seq_id: str
    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    sampler: Sampler | None


@dataclass(slots=True)
class StepResult:
    """Outcome of one step.

    sampled: seq_id -> sampled token, for every sequence that had a sampler.
    num_tokens: tokens pushed through the model (prefill + decode).
    modelled_seconds: device time from the cost model.
    wall_seconds: how long `step` took, compute plus any pacing wait.
    """

    sampled: dict[str, int] = field(default_factory=dict)
    num_tokens: int = 0
    modelled_seconds: float = 0.0
    wall_seconds: float = 0.0


class Executor:
    """Executes steps of `model` over `kv_pool` and paces them to `device`.

    `model_config` is what the cost model charges for: normally the model's own config, but
    it may describe a bigger model so the tiny numpy model stands in for it timing-wise.

    Thread contract: call `step` from one thread (the engine thread) only; it blocks for
    the compute and the pacing sleep and never touches asyncio. The KV pool is mutated in
    place; callers must not move blocks used by a step while it runs.
    """

    def __init__(
        self,
        model: StepModel,
        model_config: ModelConfig,
        device: DeviceSpec,
        pace: Pace,
        kv_pool: np.ndarray,
        cores: SharedCores | None = None,
    ) -> None:
        """`cores`: device time is booked there (vNPUs sharing cores); None: own cores."""
        self._model = model
        self._cores = cores
        self._model_config = model_config
        self._device = device
        self._pace = pace
        self._kv_pool = kv_pool
        self._lateness = 0.0  # wall seconds past the modelled clock, to be made up

    @property
    def pace(self) -> Pace:
        return self._pace

    @property
    def kv_pool(self) -> np.ndarray:
        return self._kv_pool

    def cost_seconds(self, seqs: Sequence[StepSequence]) -> float:
        """Modelled device time of a step over `seqs` (what `step` charges), without
        running it."""
        return batch_cost(self._model_config, self._device, seqs).seconds

    def step(self, seqs: Sequence[StepSequence]) -> StepResult:
        """Run one forward over `seqs`, sample, and (with `Pace.REAL`) wait out the device.

        Raises `ValueError` on duplicate seq ids or an invalid batch (see `Model.forward`);
        the KV pool may then hold partial writes for the batch's own slots.
        """
        started = time.perf_counter()
        if not seqs:
            return StepResult()
        if len({s.seq_id for s in seqs}) != len(seqs):
            raise ValueError("duplicate seq_id in one step")
        chunks = [
            SeqChunk(s.token_ids, s.start_pos, s.block_table, needs_logits=s.sampler is not None)
            for s in seqs
        ]
        logits = self._model.forward(chunks, self._kv_pool)
        sampled: dict[str, int] = {}
        row = 0
        for s in seqs:
            if s.sampler is not None:
                sampled[s.seq_id] = s.sampler.sample(logits[row])
                row += 1
        cost = batch_cost(self._model_config, self._device, seqs)
        # On shared cores the step also waits for the neighbours' booked device time.
        end = started + cost.seconds
        if self._cores is not None:
            end = self._cores.reserve(started, cost.seconds)
        if self._pace is Pace.REAL:
            _sleep_until(end - self._lateness)
        wall = time.perf_counter() - started
        expected = end - started
        self._lateness = min(max(0.0, self._lateness + wall - expected), MAX_LATENESS)
        return StepResult(
            sampled=sampled,
            num_tokens=sum(len(s.token_ids) for s in seqs),
            modelled_seconds=cost.seconds,
            wall_seconds=wall,
        )


def batch_cost(
    model_config: ModelConfig, device: DeviceSpec, seqs: Sequence[StepSequence]
) -> StepCost:
    """Modelled cost of one step over `seqs` on `device`, charged for `model_config`.

    The one place a batch of `StepSequence`s becomes `step_cost` chunks: `Executor.step`
    charges it, `Executor.cost_seconds` and the vNPU driver (`server.vnpu.sim`) predict
    it, so they cannot disagree. Same preconditions as `step_cost` (`ValueError` for an
    empty chunk); an empty batch costs nothing.
    """
    return step_cost(
        model_config, device, [(len(s.token_ids), s.start_pos + len(s.token_ids)) for s in seqs]
    )


def _sleep_until(deadline: float) -> None:
    """Sleep until `time.perf_counter() >= deadline` (loops: sleep may wake early)."""
    while (remaining := deadline - time.perf_counter()) > 0:
        time.sleep(remaining)
