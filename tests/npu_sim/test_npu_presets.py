"""Device and model presets, and their lookups."""

from __future__ import annotations

import dataclasses

import pytest

from npu_sim.device import DEVICE_PRESETS, DeviceSpec, get_device
from npu_sim.model_config import MODEL_PRESETS, ModelConfig, get_model_config
from npu_sim.tokenizer import VOCAB_SIZE


def test_device_presets() -> None:
    npu, gpu = get_device("ascend-910b"), get_device("h100-sxm")
    assert npu.hbm_bytes == 64 * 2**30 and gpu.hbm_bytes == 80 * 2**30
    assert (npu.hbm_bandwidth, gpu.hbm_bandwidth) == pytest.approx((1.6e12, 3.35e12))
    assert (npu.peak_fp16_flops, gpu.peak_fp16_flops) == pytest.approx((313e12, 989e12))
    for dev in DEVICE_PRESETS.values():
        assert dev.hbm_bandwidth > dev.host_link_bandwidth > dev.flash_bandwidth > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        npu.hbm_bytes = 1  # type: ignore[misc]


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="ascend-910b.*h100-sxm"):
        get_device("tpu")
    with pytest.raises(ValueError, match="small-llama.*tiny-llama"):
        get_model_config("gpt-5")


def test_invalid_device_is_rejected() -> None:
    with pytest.raises(ValueError):
        DeviceSpec("bad", 1, 1.0, 0.0, 1.0, 1.0)


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
