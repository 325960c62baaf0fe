"""Executor: forward + sampling + pacing to the modelled device time."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from npu_sim.cost_model import step_cost
from npu_sim.device import DeviceSpec, get_device
from npu_sim.executor import Executor, Pace, StepSequence
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


def _greedy() -> Sampler:
    return Sampler(SamplingParams(temperature=0.0), sampleable_mask)


def _decode_batch() -> list[StepSequence]:
    return [
        StepSequence("a", encode("hello"), 0, [0], _greedy()),
        StepSequence("b", encode("mid-prefill"), 0, [1], None),
        StepSequence("c", encode("x"), 0, [2], _greedy()),
    ]


def test_real_pace_lasts_at_least_the_modelled_time(
    model: Model, huge_config: ModelConfig, slow_device: DeviceSpec, new_pool: PoolFactory
) -> None:
    executor = Executor(model, huge_config, slow_device, Pace.REAL, new_pool())
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
    executor = Executor(model, tiny_config, get_device("h100-sxm"), Pace.REAL, new_pool())
    empty = executor.step([])
    assert empty.sampled == {} and empty.num_tokens == 0 and empty.modelled_seconds == 0.0
    dup = [StepSequence("a", [1], 0, [0], None), StepSequence("a", [2], 0, [1], None)]
    with pytest.raises(ValueError):
        executor.step(dup)
    assert np.isnan(executor.kv_pool).all()  # rejected before touching the pool


def test_real_pace_never_runs_ahead_of_the_modelled_clock(
    model: Model, huge_config: ModelConfig, slow_device: DeviceSpec, new_pool: PoolFactory
) -> None:
    # Lateness is made up by later steps, but only lateness: over a run the busy wall time
    # is never below the modelled time.
    executor = Executor(model, huge_config, slow_device, Pace.REAL, new_pool())
    results = [executor.step([StepSequence("a", [65 + i], i, [0], _greedy())]) for i in range(4)]
    assert sum(r.wall_seconds for r in results) >= sum(r.modelled_seconds for r in results)
