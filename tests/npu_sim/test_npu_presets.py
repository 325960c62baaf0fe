"""Device and model presets, and their lookups."""

from __future__ import annotations

import dataclasses

import pytest

from npu_sim.device import DEVICE_PRESETS, DeviceSpec, get_device
from npu_sim.links import PCIE4_X16_HOST_LINK
from npu_sim.model_config import MODEL_PRESETS, ModelConfig, get_cost_model_config, get_model_config
from npu_sim.tokenizer import VOCAB_SIZE


def test_ascend_910b_family_figures() -> None:
    b2, b3, b4 = (get_device(f"ascend-910b{n}") for n in (2, 3, 4))
    assert (b2.ai_cores, b3.ai_cores, b4.ai_cores) == (24, 20, 20)
    assert (b2.peak_flops, b3.peak_flops, b4.peak_flops) == pytest.approx(
        (353.9e12, 294.9e12, 245.7e12), rel=1e-3
    )
    assert (b2.hbm_bytes, b3.hbm_bytes, b4.hbm_bytes) == (64 * 2**30, 64 * 2**30, 32 * 2**30)
    assert (b2.hbm_bandwidth, b3.hbm_bandwidth, b4.hbm_bandwidth) == (1.6e12, 1.6e12, 0.8e12)
    assert get_device("ascend-910b") is b3  # the documented alias
    # GEMM at 89% of a 910B2's peak is the measured 315 TFLOPS.
    assert b2.effective_flops == pytest.approx(315e12, rel=0.01)
    assert 0.45 <= b3.decode_bandwidth_efficiency <= 0.55
    assert b3.host_link is PCIE4_X16_HOST_LINK
    assert 25e9 <= PCIE4_X16_HOST_LINK.read_bandwidth <= 32e9


def test_h100_figures() -> None:
    gpu = get_device("h100-sxm")
    assert gpu.hbm_bytes == 80 * 2**30
    assert (gpu.peak_flops, gpu.hbm_bandwidth) == (989e12, 3.35e12)
    assert gpu.effective_flops == pytest.approx(789e12, rel=0.01)
    assert gpu.decode_bandwidth_efficiency == pytest.approx(0.60)
    assert (gpu.host_link.read_bandwidth, gpu.host_link.write_bandwidth) == (35.2e9, 52.8e9)
    for dev in DEVICE_PRESETS.values():
        assert dev.hbm_bandwidth > dev.host_link.read_bandwidth > 0
        assert dev.prefill_mfu_short < dev.prefill_mfu_long <= dev.gemm_efficiency
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu.hbm_bytes = 1  # type: ignore[misc]


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="ascend-910b.*h100-sxm"):
        get_device("tpu")
    with pytest.raises(ValueError, match="small-llama.*tiny-llama"):
        get_model_config("gpt-5")


@pytest.mark.parametrize(
    "changes",
    [
        {"hbm_bandwidth": 0.0},
        {"gemm_efficiency": 1.5},
        {"prefill_mfu_short": 0.9},  # above the long-prompt MFU
        {"step_overhead_seconds": -1.0},
    ],
)
def test_invalid_device_is_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(get_device("h100-sxm"), **changes)


def test_cost_only_8b_presets_have_published_shapes() -> None:
    qwen, llama31 = get_cost_model_config("qwen3-8b"), get_cost_model_config("llama-3.1-8b")
    assert (qwen.num_layers, qwen.hidden_size, qwen.intermediate_size) == (36, 4096, 12288)
    assert (qwen.num_heads, qwen.num_kv_heads, qwen.head_dim, qwen.vocab_size) == (
        32,
        8,
        128,
        151936,
    )
    assert qwen.num_params == pytest.approx(8.19e9, rel=0.01)
    assert llama31.num_params == pytest.approx(8.03e9, rel=0.01)
    assert llama31.kv_bytes_per_token == 128 * 1024  # 32 layers x K,V x 8 heads x 128 x fp16
    assert qwen.kv_bytes_per_token == 144 * 1024


def test_tiny_llama_geometry() -> None:
    cfg = get_model_config("tiny-llama")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (4, 256, 8, 2)
    assert cfg.intermediate_size == 768 and cfg.vocab_size == VOCAB_SIZE
    assert cfg.head_dim == 32
    assert cfg.kv_bytes_per_token == 4 * 2 * 2 * 32 * 2
    per_layer = 256 * (8 + 2 * 2) * 32 + 256 * 256 + 3 * 256 * 768 + 2 * 256
    assert cfg.num_params == 2 * VOCAB_SIZE * 256 + 4 * per_layer + 256
    assert cfg.weight_bytes == 2 * cfg.num_params
    assert dataclasses.replace(cfg, kv_dtype="float32").kv_bytes_per_token == 2 * 1024


def test_small_llama_geometry() -> None:
    cfg = get_model_config("small-llama")
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (8, 512, 1536)
    assert set(MODEL_PRESETS) >= {"tiny-llama", "small-llama"}


@pytest.mark.parametrize(
    "changes",
    [{"num_heads": 7}, {"num_kv_heads": 3}, {"num_layers": 0}, {"kv_dtype": "int8"}],
)
def test_invalid_model_config(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(get_model_config("tiny-llama"), **changes)


def test_model_config_is_frozen() -> None:
    cfg: ModelConfig = get_model_config("tiny-llama")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_device_spec_needs_positive_rates() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(get_device("ascend-910b"), peak_flops=-1.0)
    assert isinstance(get_device("ascend-910b2"), DeviceSpec)
