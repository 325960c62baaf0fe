"""Load a llama-architecture GGUF file into `npu_sim.weights.LlamaWeights`.

`load_llama_gguf(path)` reads a llama-architecture GGUF (see `npu_sim.gguf`), derives its
`ModelConfig` from the metadata (checked against an expected preset if one is given) and
dequantises every tensor to fp32. Layout of the result, for `x @ W` linear layers:

* every matrix is fp32, C-contiguous, shape (in_features, out_features);
* `wq` / `wk` follow the rotate-half RoPE convention (HF's): within each head, dims
  [0, head_dim/2) pair with [head_dim/2, head_dim). llama.cpp's converter stores Q and K
  rows interleaved for its adjacent-pair RoPE; `unpermute_rope_rows` undoes that;
* `lm_head` is None when the embeddings are tied (use `embed.T`).

Loading SmolLM2-135M takes a few seconds and ~540 MB of RAM (all fp32).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from npu_sim.gguf import GGUFError, GGUFFile
from npu_sim.model_config import ModelConfig
from npu_sim.weights import LayerWeights, LlamaWeights


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation on a (num_heads*head_dim, in) weight.

    llama.cpp's convert script stores HF row `i` of a head at `2*i` and row
    `i + head_dim/2` at `2*i + 1` (adjacent RoPE pairs); this returns HF's order.
    """
    rows = w.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} rows do not split into {num_heads} heads of even size")
    half = rows // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_gguf(gguf: GGUFFile, name: str) -> ModelConfig:
    """The `ModelConfig` a llama GGUF's metadata describes (raises `GGUFError` if not llama)."""
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{gguf.path}: architecture {arch!r}, expected 'llama'")

    def get(key: str) -> int | float:
        value = meta.get(f"llama.{key}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise GGUFError(f"{gguf.path}: metadata llama.{key} missing or not a number")
        return value

    vocab = meta.get("llama.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) else 0
    hidden, num_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = meta.get("llama.rope.dimension_count", hidden // num_heads)
    if head_dim != hidden // num_heads:
        raise GGUFError(f"{gguf.path}: rope over {head_dim} dims of {hidden // num_heads}")
    return ModelConfig(
        name=name,
        num_layers=int(get("block_count")),
        hidden_size=hidden,
        num_heads=num_heads,
        num_kv_heads=int(get("attention.head_count_kv")),
        intermediate_size=int(get("feed_forward_length")),
        vocab_size=int(vocab),  # type: ignore[arg-type]
        rope_theta=float(get("rope.freq_base")),
        # GGUF stores eps as float32 (9.99999974e-06); round back to the published value.
        rms_eps=float(
            np.format_float_positional(np.float32(get("attention.layer_norm_rms_epsilon")))
        ),
        tied_embeddings="output.weight" not in gguf.tensors,
    )


def check_config(found: ModelConfig, expected: ModelConfig) -> None:
    """Raise `GGUFError` naming every shape field where `found` differs from `expected`."""
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    skip = {"name", "seed", "kv_dtype", "weights_sha256"}
    diffs = [
        f"{f}: file {getattr(found, f)!r}, preset {getattr(expected, f)!r}"
        for f in fields
        if f not in skip and getattr(found, f) != getattr(expected, f)
    ]
    if diffs:
        raise GGUFError(f"weights do not match preset {expected.name!r}: " + "; ".join(diffs))


def load_llama_gguf(
    path: Path | str, expected: ModelConfig | None = None
) -> tuple[ModelConfig, LlamaWeights]:
    """Config and fp32 weights of the llama GGUF at `path`.

    With `expected`, the file's shape must match it (else `GGUFError`) and `expected` is
    returned as the config; without, the config is built from the metadata and named
    after `general.name`. Raises `GGUFError` for a malformed file or a missing tensor.
    """
    gguf = GGUFFile(path)
    found = config_from_gguf(gguf, expected.name if expected else _general_name(gguf))
    if expected is not None:
        check_config(found, expected)
    config = expected or found

    def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in gguf.tensors:
            raise GGUFError(f"{gguf.path}: tensor {name!r} missing")
        array = gguf.tensor(name)
        if array.shape != shape:
            raise GGUFError(f"{gguf.path}: tensor {name!r} has shape {array.shape}, want {shape}")
        return array

    def linear(name: str, out_features: int, in_features: int) -> np.ndarray:
        """GGUF (out, in) -> (in, out) for x @ W."""
        return np.ascontiguousarray(tensor(name, (out_features, in_features)).T)

    h, i = config.hidden_size, config.intermediate_size
    q_dim = config.num_heads * config.head_dim
    kv_dim = config.num_kv_heads * config.head_dim
    layers = []
    for n in range(config.num_layers):
        p = f"blk.{n}."
        wq = unpermute_rope_rows(tensor(p + "attn_q.weight", (q_dim, h)), config.num_heads)
        wk = unpermute_rope_rows(tensor(p + "attn_k.weight", (kv_dim, h)), config.num_kv_heads)
        layers.append(
            LayerWeights(
                attn_norm=tensor(p + "attn_norm.weight", (h,)),
                wq=np.ascontiguousarray(wq.T),
                wk=np.ascontiguousarray(wk.T),
                wv=linear(p + "attn_v.weight", kv_dim, h),
                wo=linear(p + "attn_output.weight", h, q_dim),
                mlp_norm=tensor(p + "ffn_norm.weight", (h,)),
                w_gate=linear(p + "ffn_gate.weight", i, h),
                w_up=linear(p + "ffn_up.weight", i, h),
                w_down=linear(p + "ffn_down.weight", h, i),
            )
        )
    weights = LlamaWeights(
        embed=tensor("token_embd.weight", (config.vocab_size, h)),
        layers=tuple(layers),
        final_norm=tensor("output_norm.weight", (h,)),
        lm_head=None if config.tied_embeddings else linear("output.weight", config.vocab_size, h),
    )
    return config, weights


def _general_name(gguf: GGUFFile) -> str:
    name = gguf.metadata.get("general.name")
    return name if isinstance(name, str) and name else gguf.path.stem
