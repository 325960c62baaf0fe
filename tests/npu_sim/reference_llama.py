"""A plain fp32 numpy llama forward over `LlamaWeights`: the quality oracle.

Straightforward on purpose (not batch-invariant, one sequence, a growing KV cache): RMSNorm,
rotate-half RoPE, grouped-query attention, SwiGLU MLP, tied or untied head, greedy
decoding. The exact W8A8 model of `npu_sim.model` is checked against what this produces.

Time it (decode ms/step at batch 1 and a 512-token prefill):
    PYTHONPATH=. python -m tests.npu_sim.reference_llama --cache-dir ~/.cache/tierkv
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npu_sim.blas import blas_threads_limited
from npu_sim.model_config import ModelConfig
from npu_sim.weights import LlamaWeights


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE on x (tokens, heads, head_dim) at `positions` (tokens,)."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) / half)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos = np.cos(angles).astype(np.float32)[:, None, :]
    sin = np.sin(angles).astype(np.float32)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@dataclass(slots=True)
class KVCache:
    """Per layer, K and V of every token so far: (tokens, kv_heads, head_dim)."""

    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0


class ReferenceLlama:
    """fp32 llama forward for one sequence at a time."""

    def __init__(self, config: ModelConfig, weights: LlamaWeights) -> None:
        self.config = config
        self.weights = weights
        tied = weights.lm_head is None
        self.head = np.ascontiguousarray(weights.embed.T) if tied else weights.lm_head

    def forward(self, ids: Sequence[int], cache: KVCache) -> np.ndarray:
        """Append `ids` to the sequence in `cache`; return the last token's fp32 logits.

        Runs BLAS on one thread: on this small, shared machine more threads only add
        wake-ups (see npu_sim/blas.py)."""
        with blas_threads_limited(1):
            return self._forward(ids, cache)

    def _forward(self, ids: Sequence[int], cache: KVCache) -> np.ndarray:
        c, w = self.config, self.weights
        start = cache.num_tokens
        n, hd = len(ids), c.head_dim
        positions = np.arange(start, start + n)
        x = w.embed[np.asarray(ids)]
        for index, layer in enumerate(w.layers):
            h = rms_norm(x, layer.attn_norm, c.rms_eps)
            q = rope((h @ layer.wq).reshape(n, c.num_heads, hd), positions, c.rope_theta)
            k = rope((h @ layer.wk).reshape(n, c.num_kv_heads, hd), positions, c.rope_theta)
            v = (h @ layer.wv).reshape(n, c.num_kv_heads, hd)
            if index < len(cache.keys):
                cache.keys[index] = np.concatenate([cache.keys[index], k])
                cache.values[index] = np.concatenate([cache.values[index], v])
            else:
                cache.keys.append(k)
                cache.values.append(v)
            attn = self._attention(q, cache.keys[index], cache.values[index], start)
            x = x + attn.reshape(n, c.num_heads * hd) @ layer.wo
            h = rms_norm(x, layer.mlp_norm, c.rms_eps)
            gate = h @ layer.w_gate
            x = x + (gate / (1.0 + np.exp(-gate)) * (h @ layer.w_up)) @ layer.w_down
        last = rms_norm(x[-1:], w.final_norm, c.rms_eps)
        logits: np.ndarray = (last @ self.head)[0]
        return logits

    def _attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
        """Causal GQA: q (n, heads, hd) over k, v (start + n, kv_heads, hd)."""
        c = self.config
        n, total, groups = q.shape[0], k.shape[0], c.num_query_groups
        qg = q.reshape(n, c.num_kv_heads, groups, c.head_dim)
        q_t = qg.transpose(1, 2, 0, 3)  # (kv, groups, n, hd)
        scores = q_t @ k.transpose(1, 2, 0)[:, None] / np.float32(np.sqrt(c.head_dim))
        future = np.arange(total)[None, :] > (start + np.arange(n))[:, None]
        scores = np.where(future, -np.inf, scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        out: np.ndarray = (scores @ v.transpose(1, 0, 2)[:, None]).transpose(2, 0, 1, 3)
        return out

    def generate(
        self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Collection[int] = ()
    ) -> list[int]:
        """Greedy continuation of `prompt` (stops after a stop id, which is included)."""
        cache = KVCache()
        logits = self.forward(prompt, cache)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            out.append(token)
            if token in stop_ids:
                break
            logits = self.forward([token], cache)
        return out


def main() -> None:
    from npu_sim.gguf import GGUFFile
    from npu_sim.llama_gguf import load_llama_gguf
    from npu_sim.model_config import get_model_config
    from npu_sim.tokenizers import load_gguf_tokenizer
    from npu_sim.weights_fetch import fetch_model_file

    parser = argparse.ArgumentParser(description="time the fp32 reference forward")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/tierkv"))
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=512)
    args = parser.parse_args()
    path = fetch_model_file(args.model, args.cache_dir)
    t0 = time.perf_counter()
    GGUFFile(path)
    t1 = time.perf_counter()
    tokenizer = load_gguf_tokenizer(path, args.model)
    t2 = time.perf_counter()
    config, weights = load_llama_gguf(path, get_model_config(args.model))
    t3 = time.perf_counter()
    print(f"open GGUF {t1 - t0:.2f} s, tokenizer {t2 - t1:.2f} s, weights {t3 - t2:.2f} s")
    model = ReferenceLlama(config, weights)
    prompt = tokenizer.apply_chat_template([("user", "What is the capital of France?")])
    answer = model.generate(prompt, 16, tokenizer.stop_token_ids)
    print(f"answer: {tokenizer.decode(answer)!r}")

    cache = KVCache()
    logits = model.forward(prompt, cache)
    wall, cpu = [], []
    for _ in range(args.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        logits = model.forward([int(np.argmax(logits))], cache)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    print(
        f"decode batch 1 (context {len(prompt)}..{cache.num_tokens}): median "
        f"{np.median(wall) * 1e3:.1f} ms/step wall, {np.median(cpu) * 1e3:.1f} ms CPU"
    )
    ids = np.random.default_rng(0).integers(17, config.vocab_size, args.prefill).tolist()
    w0, c0 = time.perf_counter(), time.process_time()
    model.forward(ids, KVCache())
    wall_s, cpu_s = time.perf_counter() - w0, time.process_time() - c0
    print(f"prefill {args.prefill} tokens: {wall_s:.2f} s wall, {cpu_s:.2f} s CPU")


if __name__ == "__main__":
    main()
