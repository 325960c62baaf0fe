"""Calibrated roofline: formulas with their efficiency factors, monotone, right regimes."""

from __future__ import annotations

import math

import pytest

from npu_sim.cost_model import MFU_LONG_TOKENS, MFU_SHORT_TOKENS, mfu, step_cost
from npu_sim.device import get_device
from npu_sim.model_config import ModelConfig, get_cost_model_config, get_model_config

NPU = get_device("ascend-910b")
GPU = get_device("h100-sxm")


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return get_model_config("tiny-llama")


@pytest.fixture(scope="module")
def llama() -> ModelConfig:
    return get_cost_model_config("llama-3-8b")


def test_monotone_in_tokens_and_context(cfg: ModelConfig) -> None:
    def cost(new: int, ctx: int) -> tuple[float, float, float]:
        c = step_cost(cfg, NPU, [(new, ctx)])
        return c.flops, c.bytes, c.seconds

    for smaller, larger in [((1, 100), (2, 100)), ((1, 100), (1, 1000)), ((100, 100), (200, 200))]:
        (f0, b0, s0), (f1, b1, s1) = cost(*smaller), cost(*larger)
        assert f0 < f1 and b0 < b1 and s0 < s1
    one = step_cost(cfg, NPU, [(1, 500)])
    two = step_cost(cfg, NPU, [(1, 500), (1, 500)])
    assert two.flops > one.flops and two.bytes > one.bytes
    # Weights are read once per step, not once per sequence.
    assert two.bytes < 2 * one.bytes


def test_decode_step_is_overhead_plus_bytes_at_the_measured_bandwidth(llama: ModelConfig) -> None:
    for dev in (NPU, GPU):
        decode = step_cost(llama, dev, [(1, 1000)] * 16)
        assert not decode.is_compute_bound
        expected = dev.step_overhead_seconds + decode.bytes / (
            dev.hbm_bandwidth * dev.decode_bandwidth_efficiency
        )
        assert decode.seconds == pytest.approx(expected)
    # An 8B decode on a 910B: ~15 GB of weights (all but the embedding table) at 50% of
    # 1.6 TB/s, plus 1 ms of overhead.
    assert step_cost(llama, NPU, [(1, 1)]).seconds == pytest.approx(0.0198, rel=0.02)


def test_prefill_step_is_overhead_plus_flops_at_the_modelled_mfu(llama: ModelConfig) -> None:
    for dev in (NPU, GPU):
        prefill = step_cost(llama, dev, [(4096, 4096)])
        assert prefill.is_compute_bound
        expected = dev.step_overhead_seconds + prefill.flops / (
            dev.peak_flops * dev.prefill_mfu_long
        )
        assert prefill.seconds == pytest.approx(expected)


def test_mfu_ramps_with_tokens_in_the_step() -> None:
    assert mfu(NPU, 1) == mfu(NPU, MFU_SHORT_TOKENS) == NPU.prefill_mfu_short
    assert mfu(NPU, MFU_LONG_TOKENS) == mfu(NPU, 100_000) == NPU.prefill_mfu_long
    mid = int(math.sqrt(MFU_SHORT_TOKENS * MFU_LONG_TOKENS))  # halfway in log2
    halfway = (NPU.prefill_mfu_short + NPU.prefill_mfu_long) / 2
    assert mfu(NPU, mid) == pytest.approx(halfway, rel=0.01)
    values = [mfu(NPU, n) for n in range(1, 2048, 37)]
    assert values == sorted(values)


def test_flops_and_bytes_formula(cfg: ModelConfig) -> None:
    c = step_cost(cfg, NPU, [(3, 10)])
    linear = cfg.num_layers * (cfg.num_params_per_layer - 2 * cfg.hidden_size)
    pairs = 8 + 9 + 10  # positions 7, 8, 9 attend to 8, 9, 10 keys
    attn = 4 * cfg.num_heads * cfg.head_dim * cfg.num_layers * pairs
    assert c.flops == 2 * (linear * 3 + cfg.hidden_size * cfg.vocab_size) + attn
    # All weights once, but of the embedding table only the 3 looked-up rows.
    embed_table, embed_rows = cfg.vocab_size * cfg.hidden_size * 2, 3 * cfg.hidden_size * 2
    weights = cfg.weight_bytes - embed_table + embed_rows
    assert c.bytes == weights + (10 + 3) * cfg.kv_bytes_per_token
    assert c.compute_seconds == pytest.approx(c.flops / (NPU.peak_flops * mfu(NPU, 3)))
    assert c.memory_seconds == pytest.approx(c.bytes / NPU.effective_hbm_bandwidth)


def test_empty_and_invalid_steps(cfg: ModelConfig) -> None:
    assert step_cost(cfg, NPU, []).seconds == 0.0  # no overhead for a step never run
    for bad in [(0, 5), (6, 5), (-1, 3)]:
        with pytest.raises(ValueError):
            step_cost(cfg, NPU, [bad])
