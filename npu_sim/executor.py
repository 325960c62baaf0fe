"""Runs model steps on the simulated NPU: forward, sample, and pace to the device.

A `StepModel` (the exact numpy `Model`, or the `EmulatedModel` of a real shape) produces
the tokens and KV bytes; the cost model says how long the step would take on the
simulated device; with `Pace.REAL` the executor sleeps until the
step has lasted at least that long. That sleep *is* the device simulation: wall-clock
behaviour (latency, throughput, queueing) then looks like the modelled accelerator as long
as numpy on the host is faster than the modelled device.

Host work between steps is overlapped with the device, as in vLLM's async scheduling
(the next step is scheduled while the current one runs, and outputs are processed while
the next one runs): a step that follows another without the device going idle starts on
the modelled clock when the device is free, not when the host handed it over, unless the
host's own work since it launched the previous step took longer than that step. So
scheduling, cache polls, spills and output hand-off cost nothing as long as they fit in
the device's step time, which is what `tierkv simulate` assumes. The engine calls
`Executor.idle` when it has nothing to run; the step after that starts when submitted.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from npu_sim.arbiter import SharedCores
from npu_sim.cost_model import StepCost, step_cost
from npu_sim.device import DeviceSpec
from npu_sim.kv_pool import KVPool
from npu_sim.model import SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.sampling import Sampler

# With Pace.REAL a step ends when the modelled clock says, and lateness (a sleep that
# woke late on a busy host, a step whose host compute outran its modelled time) is made
# up by starting the next steps earlier on the device timeline (from when the device
# was free), so busy wall time tracks modelled time over a run rather than drifting by
# the host's scheduling latency on every step. Lateness is not carried over an idle
# device (`Executor.idle`): a step after a lull is never shortened. Capped at
# about ten decode steps, so that one long stall is not repaid by a long burst of
# back-to-back steps (measured: 4 replicas on a CPU-starved host, wall/modelled 1.70-1.76
# with a 20 ms cap, 1.34-1.45 with 250 ms).
MAX_LATENESS = 0.25


class StepModel(Protocol):
    """What the executor runs: `npu_sim.model.Model` and `npu_sim.emulated.EmulatedModel`.

    `forward` writes every new token's KV into the pool and returns one row of logits over
    the tokenizer's vocabulary per chunk with `needs_logits`, in batch order (`ValueError`
    for an invalid batch). `numerics_id` names everything its KV bytes and tokens depend
    on (it goes into every block hash). `release` is told which sequences (`seq_key`)
    finished, so state kept per sequence can go (it changes speed, never results). One
    thread at a time.
    """

    @property
    def numerics_id(self) -> str: ...

    def forward(self, batch: Sequence[SeqChunk], kv_pool: KVPool | np.ndarray) -> np.ndarray: ...

    def release(self, seq_keys: Iterable[Hashable]) -> None: ...


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
    wall_seconds: wall time the step held the device: from its start on the device, or
        from when the previous step returned if that is later, to `step` returning
        (compute plus any pacing wait). Back to back, steps' wall times add up to the
        wall time the device was busy, with no overlap; with `Pace.REAL` that sum is at
        least their modelled time.
    host_overlap_seconds: host time since the previous step returned (scheduling, output
        hand-off, ...) that ran while the device was busy, so it did not delay this step
        (see the module doc); lateness made up is not counted.
    device_start, device_end: the step on the modelled device timeline, in
        `time.perf_counter` seconds.
    """

    sampled: dict[str, int] = field(default_factory=dict)
    num_tokens: int = 0
    modelled_seconds: float = 0.0
    wall_seconds: float = 0.0
    host_overlap_seconds: float = 0.0
    device_start: float = 0.0
    device_end: float = 0.0


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
        kv_pool: KVPool | np.ndarray,
        cores: SharedCores | None = None,
    ) -> None:
        """`cores`: device time is booked there (vNPUs sharing cores); None: own cores."""
        self._model = model
        self._cores = cores
        self._model_config = model_config
        self._device = device
        self._pace = pace
        self._kv_pool = kv_pool
        # The device timeline while steps follow each other (None: the device is idle).
        # `_launched_at`: when the last step started on the device (the host's work for
        # the next one begins then); `_returned_at`: when `step` returned, wall clock.
        self._device_free_at: float | None = None
        self._launched_at = 0.0
        self._returned_at = 0.0

    @property
    def pace(self) -> Pace:
        return self._pace

    def cost_seconds(self, seqs: Sequence[StepSequence]) -> float:
        """Modelled device time of a step over `seqs` (what `step` charges), without
        running it."""
        return batch_cost(self._model_config, self._device, seqs).seconds

    def idle(self) -> None:
        """The engine has nothing to run: the device goes idle, and the next step starts
        on the device when `step` is called (no host time to hide behind a running step)."""
        self._device_free_at = None

    def release(self, seq_ids: Iterable[str]) -> None:
        """These sequences finished (`StepModel.release`); engine thread only."""
        self._model.release(seq_ids)

    def step(self, seqs: Sequence[StepSequence]) -> StepResult:
        """Run one forward over `seqs`, sample, and (with `Pace.REAL`) wait out the device.

        Unless `idle` was called since the last step, the step starts on the device when
        the previous one ended, or when the host's work since launching the previous step
        was done if that is later (see the module doc), or at most `MAX_LATENESS` before
        now. Raises `ValueError` on duplicate seq ids or an invalid batch (see
        `Model.forward`); the KV pool may then hold partial writes for the batch's own
        slots.
        """
        started = time.perf_counter()
        if not seqs:
            return StepResult()
        if len({s.seq_id for s in seqs}) != len(seqs):
            raise ValueError("duplicate seq_id in one step")
        if self._device_free_at is None:
            launched = begin = started
            hidden = 0.0
        else:
            # Async scheduling: the host's work for this step (scheduling, and the
            # previous step's outputs) began when the previous step started on the device.
            launched = self._launched_at + (started - self._returned_at)
            # A late wake-up or a forward that outran its modelled time is made up by
            # later steps, but by at most MAX_LATENESS.
            begin = max(self._device_free_at, launched, started - MAX_LATENESS)
            hidden = max(0.0, min(started - self._returned_at, started - begin))
        chunks = [
            SeqChunk(
                s.token_ids,
                s.start_pos,
                s.block_table,
                needs_logits=s.sampler is not None,
                seq_key=s.seq_id,
            )
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
        end = begin + cost.seconds
        if self._cores is not None:
            end = self._cores.reserve(begin, cost.seconds)
        if self._pace is Pace.REAL:
            _sleep_until(end)
        returned = time.perf_counter()
        result = StepResult(
            sampled=sampled,
            num_tokens=sum(len(s.token_ids) for s in seqs),
            modelled_seconds=cost.seconds,
            wall_seconds=returned - max(begin, self._returned_at),
            host_overlap_seconds=hidden,
            device_start=begin,
            device_end=end,
        )
        if self._pace is Pace.REAL:  # unpaced, the device timeline would run ahead
            # The host's work for the next step begins when this one starts on the device
            # (`end - cost`: after any wait for shared cores), so it hides behind one step.
            self._device_free_at, self._returned_at = end, returned
            self._launched_at = end - cost.seconds
        return result


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
