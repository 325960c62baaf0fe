"""Roofline cost model: monotone, and decode vs prefill land on the right side."""

from __future__ import annotations

import pytest

from npu_sim.cost_model import step_cost, transfer_seconds
from npu_sim.device import get_device
from npu_sim.model_config import ModelConfig, get_model_config

NPU = get_device("ascend-910b")


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return get_model_config("tiny-llama")


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


def test_decode_is_bandwidth_bound_and_prefill_compute_bound(cfg: ModelConfig) -> None:
    decode = step_cost(cfg, NPU, [(1, 1000)] * 16)
    assert not decode.is_compute_bound
    assert decode.seconds == pytest.approx(decode.bytes / NPU.hbm_bandwidth)
    prefill = step_cost(cfg, NPU, [(4096, 4096)])
    assert prefill.is_compute_bound
    assert prefill.seconds == pytest.approx(prefill.flops / NPU.peak_fp16_flops)


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


def test_empty_and_invalid_steps(cfg: ModelConfig) -> None:
    assert step_cost(cfg, NPU, []).seconds == 0.0
    for bad in [(0, 5), (6, 5), (-1, 3)]:
        with pytest.raises(ValueError):
            step_cost(cfg, NPU, [bad])


def test_transfer_seconds() -> None:
    assert transfer_seconds(7e9, NPU.flash_bandwidth) == pytest.approx(1.0)
    assert transfer_seconds(0, 1.0) == 0.0
    with pytest.raises(ValueError):
        transfer_seconds(1, 0)
