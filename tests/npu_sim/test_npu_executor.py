"""Executor: forward + sampling + pacing to the modelled device time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from npu_sim.cost_model import step_cost
from npu_sim.device import DeviceSpec, get_device
from npu_sim.executor import MAX_LATENESS, Executor, Pace, StepSequence
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizer import encode, sampleable_mask
from tests.npu_sim.pools import PoolFactory

TARGET_SECONDS = 0.05


@pytest.fixture(scope="module")
def huge_config(tiny_config: ModelConfig) -> ModelConfig:
    """A 70B-ish shape the cost model charges for while the tiny model does the math."""
    return replace(
        tiny_config,
        name="huge",
        num_layers=80,
        hidden_size=8192,
        num_heads=64,
        num_kv_heads=8,
        intermediate_size=28672,
    )


@pytest.fixture(scope="module")
def slow_device(huge_config: ModelConfig) -> DeviceSpec:
    """A device on which one decode step of `huge_config` takes ~TARGET_SECONDS."""
    return replace(
        get_device("ascend-910b"),
        name="slow",
        hbm_bandwidth=huge_config.weight_bytes / TARGET_SECONDS,
        decode_bandwidth_efficiency=1.0,
        step_overhead_seconds=0.0,
        peak_flops=1e16,
    )


SlowExecutor = Callable[[Pace], Executor]
"""Makes an executor of `huge_config` on `slow_device` with the given pace and a fresh
pool."""


@pytest.fixture
def slow_executor(
    model: Model, huge_config: ModelConfig, slow_device: DeviceSpec, new_pool: PoolFactory
) -> SlowExecutor:
    def make(pace: Pace) -> Executor:
        return Executor(model, huge_config, slow_device, pace, new_pool())

    return make


def _greedy() -> Sampler:
    return Sampler(SamplingParams(temperature=0.0), sampleable_mask)


def _decode_batch() -> list[StepSequence]:
    return [
        StepSequence("a", encode("hello"), 0, [0], _greedy()),
        StepSequence("b", encode("mid-prefill"), 0, [1], None),
        StepSequence("c", encode("x"), 0, [2], _greedy()),
    ]


def test_real_pace_lasts_at_least_the_modelled_time(slow_executor: SlowExecutor) -> None:
    executor = slow_executor(Pace.REAL)
    started = time.perf_counter()
    result = executor.step(_decode_batch())
    elapsed = time.perf_counter() - started
    assert result.modelled_seconds == pytest.approx(TARGET_SECONDS, rel=0.2)
    assert result.wall_seconds >= result.modelled_seconds
    assert elapsed >= result.modelled_seconds


def test_no_pace_does_not_sleep(
    model: Model, huge_config: ModelConfig, slow_device: DeviceSpec, new_pool: PoolFactory
) -> None:
    # 100x slower device: a 5 s modelled step, far above any compute time even on a busy
    # machine, so finishing early proves no sleep happened.
    slower = replace(slow_device, hbm_bandwidth=slow_device.hbm_bandwidth / 100)
    executor = Executor(model, huge_config, slower, Pace.NONE, new_pool())
    result = executor.step(_decode_batch())
    assert result.modelled_seconds > 4.0
    assert result.wall_seconds < 1.0


def test_step_samples_like_forward_plus_sampler(
    model: Model, tiny_config: ModelConfig, new_pool: PoolFactory
) -> None:
    pool = new_pool()
    executor = Executor(model, tiny_config, get_device("h100-sxm"), Pace.NONE, pool)
    result = executor.step(_decode_batch())
    assert set(result.sampled) == {"a", "c"}
    assert result.num_tokens == len("hello") + len("mid-prefill") + 1
    expected_cost = step_cost(tiny_config, get_device("h100-sxm"), [(5, 5), (11, 11), (1, 1)])
    assert result.modelled_seconds == pytest.approx(expected_cost.seconds)

    logits = model.forward([SeqChunk(encode("hello"), 0, [0])], new_pool())
    assert result.sampled["a"] == _greedy().sample(logits[0])


def test_empty_step_and_duplicate_ids(
    model: Model, tiny_config: ModelConfig, new_pool: PoolFactory
) -> None:
    pool = new_pool()
    executor = Executor(model, tiny_config, get_device("h100-sxm"), Pace.REAL, pool)
    empty = executor.step([])
    assert empty.sampled == {} and empty.num_tokens == 0 and empty.modelled_seconds == 0.0
    dup = [StepSequence("a", [1], 0, [0], None), StepSequence("a", [2], 0, [1], None)]
    with pytest.raises(ValueError):
        executor.step(dup)
    assert np.isnan(pool).all()  # rejected before touching the pool


def test_real_pace_never_runs_ahead_of_the_modelled_clock(slow_executor: SlowExecutor) -> None:
    # Lateness is made up by later steps, but only lateness: over a run the busy wall time
    # is never below the modelled time.
    executor = slow_executor(Pace.REAL)
    results = [executor.step([StepSequence("a", [65 + i], i, [0], _greedy())]) for i in range(4)]
    assert sum(r.wall_seconds for r in results) >= sum(r.modelled_seconds for r in results)


class _VirtualTime:
    """Stands in for the executor module's `time`: `sleep` moves the clock and is
    counted; `late` is added to every wake-up (a busy host)."""

    def __init__(self, late: float = 0.0) -> None:
        self.now = 1000.0
        self.late = late
        self.num_sleeps = 0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.num_sleeps += 1
        self.now += seconds + self.late


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> _VirtualTime:
    clock = _VirtualTime()
    monkeypatch.setattr("npu_sim.executor.time", clock)
    return clock


def _decode_step(i: int) -> list[StepSequence]:
    return [StepSequence("a", [65 + i % 26], i, [0, 1, 2, 3], _greedy())]


def test_host_time_between_steps_hides_behind_the_device(
    slow_executor: SlowExecutor, virtual_time: _VirtualTime
) -> None:
    # Async scheduling: host work after a step (output hand-off, scheduling the next)
    # runs while the device is busy, so a step that follows another starts when the
    # device is free. Before, host time was added to every step.
    executor = slow_executor(Pace.REAL)
    t0 = virtual_time.now
    first = executor.step(_decode_step(0))
    host = first.modelled_seconds / 4
    virtual_time.now += host
    second = executor.step(_decode_step(1))
    assert first.device_start == t0 and first.host_overlap_seconds == 0.0
    assert second.device_start == first.device_end
    assert second.host_overlap_seconds == pytest.approx(host)
    assert virtual_time.now == pytest.approx(t0 + first.modelled_seconds + second.modelled_seconds)
    # The host time ran while the device was busy: it is in the device's busy span.
    assert second.wall_seconds == pytest.approx(second.modelled_seconds)


def test_host_time_longer_than_the_step_delays_the_device(
    slow_executor: SlowExecutor, virtual_time: _VirtualTime
) -> None:
    executor = slow_executor(Pace.REAL)
    first = executor.step(_decode_step(0))
    host = first.modelled_seconds * 3
    virtual_time.now += host
    second = executor.step(_decode_step(1))
    # The host began this work when it launched the first step.
    assert second.device_start == pytest.approx(first.device_start + host)
    assert second.device_end == pytest.approx(second.device_start + second.modelled_seconds)


def test_host_time_hides_behind_one_step_only_after_a_busy_stretch(
    slow_executor: SlowExecutor, virtual_time: _VirtualTime
) -> None:
    # The host's work for a step begins when the previous step starts on the device, so
    # at most one step's time hides it. Before, the host timeline lagged the device by
    # every step's length, and after 40 back-to-back steps a stall of 3 steps hid
    # entirely (the next step started when the previous ended, with no wait).
    executor = slow_executor(Pace.REAL)
    results = [executor.step(_decode_step(i)) for i in range(40)]
    stall = results[-1].modelled_seconds * 3
    virtual_time.now += stall
    after = executor.step(_decode_step(40))
    assert after.device_start == pytest.approx(results[-1].device_start + stall)
    assert after.host_overlap_seconds == pytest.approx(results[-1].modelled_seconds)


def test_a_step_after_idle_starts_when_submitted(
    slow_executor: SlowExecutor, virtual_time: _VirtualTime
) -> None:
    # Lateness and host time are not carried over a lull: the first step after it is
    # never shortened.
    virtual_time.late = 0.1  # every wake-up 100 ms late
    executor = slow_executor(Pace.REAL)
    executor.step(_decode_step(0))
    executor.idle()
    virtual_time.late = 0.0
    virtual_time.now += 5.0
    submitted = virtual_time.now
    after = executor.step(_decode_step(1))
    assert after.device_start == submitted and after.host_overlap_seconds == 0.0
    assert virtual_time.now == pytest.approx(submitted + after.modelled_seconds)


def test_late_wake_ups_are_made_up_up_to_a_cap(
    slow_executor: SlowExecutor, virtual_time: _VirtualTime
) -> None:
    virtual_time.late = 0.02  # every wake-up 20 ms late
    executor = slow_executor(Pace.REAL)
    results = [executor.step(_decode_step(i)) for i in range(5)]
    # Back to back, each late wake-up is made up by the next step: it starts on the
    # device where the previous one ended, so the device timeline has no gaps.
    for prev, cur in zip(results, results[1:], strict=False):
        assert cur.device_start == prev.device_end
        assert cur.host_overlap_seconds == 0.0  # lateness made up is not host time
    # Busy wall time is counted once: the steps' wall times add up to the span.
    span = virtual_time.now - results[0].device_start
    assert sum(r.wall_seconds for r in results) == pytest.approx(span)
    virtual_time.late = 1.0  # one long stall is made up by at most MAX_LATENESS
    executor.step(_decode_step(5))
    virtual_time.late = 0.0
    submitted = virtual_time.now
    after = executor.step(_decode_step(6))
    assert after.device_start == pytest.approx(submitted - MAX_LATENESS)


def test_unpaced_steps_each_start_when_submitted(
    slow_executor: SlowExecutor, virtual_time: _VirtualTime
) -> None:
    executor = slow_executor(Pace.NONE)
    first = executor.step(_decode_step(0))
    virtual_time.now += 0.001
    second = executor.step(_decode_step(1))
    assert virtual_time.num_sleeps == 0
    assert second.device_start == first.device_start + 0.001
