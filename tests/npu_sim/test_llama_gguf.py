"""GGUF llama loader: orientation, Q/K un-permutation, config checks; the real SmolLM2 file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from npu_sim.gguf import GGUFError, GGUFFile
from npu_sim.llama_gguf import load_llama_gguf, unpermute_rope_rows
from npu_sim.model_config import ModelConfig, get_model_config
from npu_sim.weights import LlamaWeights
from tests.npu_sim.gguf_writer import FLOAT32, STRING, UINT32, f32_tensor, write_gguf


def llama_cpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to HF's Q and K weights."""
    return (
        w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def test_unpermute_hand_built_example() -> None:
    # Two heads of head_dim 4: llama.cpp stores HF rows 0, 2, 1, 3 of each head as
    # 0, 1, 2, 3 (row i next to row i + head_dim/2, its RoPE partner).
    gguf_rows = np.array([0, 2, 1, 3, 4, 6, 5, 7], dtype=np.float32)[:, None]
    np.testing.assert_array_equal(unpermute_rope_rows(gguf_rows, 2)[:, 0], np.arange(8))
    hf = np.random.default_rng(0).standard_normal((3 * 64, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rope_rows(llama_cpp_permute(hf, 3), 3), hf)
    with pytest.raises(ValueError):
        unpermute_rope_rows(np.zeros((6, 2)), 2)  # head_dim 3 is odd


def rope_rotate_half(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
    half = x.shape[-1] // 2
    ang = pos * theta ** (-np.arange(half) / half)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate(
        [x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1
    )


def rope_adjacent_pairs(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """llama.cpp's normal-mode RoPE: rotates dims (2i, 2i+1)."""
    half = x.shape[-1] // 2
    ang = pos * theta ** (-np.arange(half) / half)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * np.cos(ang) - x1 * np.sin(ang)
    out[..., 1::2] = x0 * np.sin(ang) + x1 * np.cos(ang)
    return out


def test_unpermuted_weights_with_rotate_half_give_llama_cpp_scores() -> None:
    """Attention scores from the file's Q/K with llama.cpp's RoPE equal those from the
    un-permuted Q/K with rotate-half RoPE: the un-permutation goes the right way."""
    rng = np.random.default_rng(1)
    heads, hd, hidden, theta = 2, 8, 16, 100.0
    wq_file = rng.standard_normal((heads * hd, hidden))
    wk_file = rng.standard_normal((heads * hd, hidden))
    x_q, x_k = rng.standard_normal(hidden), rng.standard_normal(hidden)

    def scores(wq: np.ndarray, wk: np.ndarray, rope: object) -> np.ndarray:
        q = rope(np.reshape(wq @ x_q, (heads, hd)), 5, theta)  # type: ignore[operator]
        k = rope(np.reshape(wk @ x_k, (heads, hd)), 2, theta)  # type: ignore[operator]
        return np.asarray((q * k).sum(-1))

    ours = scores(
        unpermute_rope_rows(wq_file, heads), unpermute_rope_rows(wk_file, heads), rope_rotate_half
    )
    theirs = scores(wq_file, wk_file, rope_adjacent_pairs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    naive = scores(wq_file, wk_file, rope_rotate_half)  # forgetting to un-permute
    assert not np.allclose(naive, theirs)


def arrays_of(record: object) -> list[np.ndarray]:
    return [getattr(record, f.name) for f in dataclasses.fields(record)]  # type: ignore[arg-type]


TINY = ModelConfig(
    name="tiny-gguf",
    num_layers=2,
    hidden_size=8,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=12,
    vocab_size=10,
    rope_theta=500.0,
    rms_eps=1e-6,
    tied_embeddings=True,
)


def write_tiny_llama(path: Path, untied: bool = False, drop: str = "") -> dict[str, np.ndarray]:
    """A random llama GGUF of shape TINY (F32); returns its tensors in GGUF (numpy) order."""
    c, rng = TINY, np.random.default_rng(2)
    h, i, v, hd = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    shapes = {"token_embd.weight": (v, h), "output_norm.weight": (h,)}
    if untied:
        shapes["output.weight"] = (v, h)
    for n in range(c.num_layers):
        shapes |= {
            f"blk.{n}.attn_norm.weight": (h,),
            f"blk.{n}.attn_q.weight": (c.num_heads * hd, h),
            f"blk.{n}.attn_k.weight": (c.num_kv_heads * hd, h),
            f"blk.{n}.attn_v.weight": (c.num_kv_heads * hd, h),
            f"blk.{n}.attn_output.weight": (h, c.num_heads * hd),
            f"blk.{n}.ffn_norm.weight": (h,),
            f"blk.{n}.ffn_gate.weight": (i, h),
            f"blk.{n}.ffn_up.weight": (i, h),
            f"blk.{n}.ffn_down.weight": (h, i),
        }
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items() if k != drop}
    meta = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "Tiny GGUF"),
        ("llama.block_count", UINT32, c.num_layers),
        ("llama.embedding_length", UINT32, h),
        ("llama.feed_forward_length", UINT32, i),
        ("llama.attention.head_count", UINT32, c.num_heads),
        ("llama.attention.head_count_kv", UINT32, c.num_kv_heads),
        ("llama.rope.freq_base", FLOAT32, c.rope_theta),
        ("llama.attention.layer_norm_rms_epsilon", FLOAT32, c.rms_eps),
        ("llama.vocab_size", UINT32, v),
    ]
    write_gguf(path, meta, [f32_tensor(k, a) for k, a in arrays.items()])
    return arrays


def test_loader_orients_and_unpermutes(tmp_path: Path) -> None:
    raw = write_tiny_llama(tmp_path / "tiny.gguf")
    config, w = load_llama_gguf(tmp_path / "tiny.gguf")
    assert config == dataclasses.replace(TINY, name="Tiny GGUF")
    assert isinstance(w, LlamaWeights) and w.lm_head is None and len(w.layers) == 2
    layer = w.layers[1]
    np.testing.assert_array_equal(layer.wq, unpermute_rope_rows(raw["blk.1.attn_q.weight"], 2).T)
    np.testing.assert_array_equal(layer.wk, unpermute_rope_rows(raw["blk.1.attn_k.weight"], 1).T)
    np.testing.assert_array_equal(layer.wv, raw["blk.1.attn_v.weight"].T)
    np.testing.assert_array_equal(layer.wo, raw["blk.1.attn_output.weight"].T)
    np.testing.assert_array_equal(layer.w_down, raw["blk.1.ffn_down.weight"].T)
    np.testing.assert_array_equal(layer.mlp_norm, raw["blk.1.ffn_norm.weight"])
    np.testing.assert_array_equal(w.embed, raw["token_embd.weight"])
    for array in (w.embed, w.final_norm, *arrays_of(layer)):
        assert array.dtype == np.float32 and array.flags.c_contiguous


def test_untied_head_and_config_checks(tmp_path: Path) -> None:
    raw = write_tiny_llama(tmp_path / "untied.gguf", untied=True)
    config, w = load_llama_gguf(tmp_path / "untied.gguf")
    assert not config.tied_embeddings and w.lm_head is not None
    np.testing.assert_array_equal(w.lm_head, raw["output.weight"].T)  # (H, V)

    write_tiny_llama(tmp_path / "tiny.gguf")
    config, _ = load_llama_gguf(tmp_path / "tiny.gguf", expected=TINY)
    assert config is TINY
    wrong = dataclasses.replace(TINY, intermediate_size=16, rope_theta=1e4)
    with pytest.raises(GGUFError, match="intermediate_size.*rope_theta"):
        load_llama_gguf(tmp_path / "tiny.gguf", expected=wrong)

    write_tiny_llama(tmp_path / "missing.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(GGUFError, match="blk.1.ffn_up.weight"):
        load_llama_gguf(tmp_path / "missing.gguf")


def test_smollm_preset_needs_no_download() -> None:
    config = get_model_config("smollm2-135m")
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.rope_theta, config.rms_eps) == (49152, 1e5, 1e-5)
    assert config.tied_embeddings and config.kv_dtype == "float16"
    assert config.kv_bytes_per_token == 23040
    untied = dataclasses.replace(config, tied_embeddings=False)
    assert untied.num_params - config.num_params == 49152 * 576


def test_real_smollm_weights(smollm_path: Path, smollm: tuple[ModelConfig, LlamaWeights]) -> None:
    config, w = smollm
    assert config is get_model_config("smollm2-135m")
    gguf = GGUFFile(smollm_path)
    assert config.num_params == sum(t.num_elements for t in gguf.tensors.values())
    assert w.lm_head is None and w.embed.shape == (49152, 576) and len(w.layers) == 30
    layer = w.layers[0]
    assert layer.wq.shape == (576, 576) and layer.wk.shape == (576, 192)
    assert layer.w_gate.shape == (576, 1536) and layer.w_down.shape == (1536, 576)
    assert all(a.dtype == np.float32 for a in arrays_of(layer))
