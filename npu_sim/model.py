"""A llama-style decoder in numpy that attends over a paged KV pool, with exact numerics.

The model owns only its (quantised) weights; the KV pool (`[num_blocks, num_layers, 2,
block_size, num_kv_heads, head_dim]`, axis 2: K=0 / V=1, dtype `config.kv_dtype`) is
passed into every forward, so the cache manager can spill and reload blocks behind the
model's back. A counted pool (`npu_sim.kv_pool.KVPool`: read-only bytes and a write
generation per block and layer) lets decode contexts stay widened across steps; with a
bare array the model widens every step.

Batch invariance, bit for bit: the logits and KV bytes of a token depend only on the
token, its position and the KV bytes of its context, never on the rest of the batch,
chunk boundaries, row position, BLAS kernel or thread count. `npu_sim.ops` says how.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from npu_sim.batch_plan import DecodeGroup, SeqChunk, group_decodes, plan_batch, row_key
from npu_sim.blas import blas_threads_limited
from npu_sim.kv_pool import KVPool, pool_bytes, write_tokens
from npu_sim.model_config import ModelConfig
from npu_sim.ops import (
    QuantizedLinear,
    RopeTable,
    apply_rope,
    attend,
    linear,
    quantize_k,
    quantize_v,
    rms_norm,
    silu_mul,
    widen,
)
from npu_sim.weights import LayerWeights, LlamaWeights
from npu_sim.wide_context import WideContext

# Bump when a change here or in ops changes result bits.
NUMERICS_VERSION = 2
# Query rows per attention call of a long chunk: bounds the score matrices, so they stay
# in cache (a 4k prefill, CPU s: 2.4-2.6 at 32 or 64 rows, 2.9-3.1 at 128, 3.4-4.4 at 256).
_ROW_TILE = 64
# Default bound of the widened decode contexts kept across steps (`WideContext`).
DEFAULT_WIDE_CONTEXT_BYTES = 512 << 20


@dataclass(frozen=True, slots=True)
class _Layer:
    attn_norm: np.ndarray
    wqkv: QuantizedLinear
    wo: QuantizedLinear
    mlp_norm: np.ndarray
    w_gate_up: QuantizedLinear
    w_down: QuantizedLinear


def random_weights(config: ModelConfig) -> LlamaWeights:
    """Seeded random weights for a preset without a checkpoint (same seed, same weights)."""
    rng = np.random.default_rng(config.seed)
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size

    def dense(fan_in: int, fan_out: int) -> np.ndarray:
        return rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.float32(
            np.sqrt(fan_in)
        )

    # Embedding rows ~ N(0, 1): the first RMSNorm rescales them anyway.
    embed = rng.standard_normal((config.vocab_size, h), dtype=np.float32)
    layers = tuple(
        LayerWeights(
            attn_norm=np.ones(h, dtype=np.float32),
            wq=dense(h, config.num_heads * hd),
            wk=dense(h, config.num_kv_heads * hd),
            wv=dense(h, config.num_kv_heads * hd),
            wo=dense(config.num_heads * hd, h),
            mlp_norm=np.ones(h, dtype=np.float32),
            w_gate=dense(h, inter),
            w_up=dense(h, inter),
            w_down=dense(inter, h),
        )
        for _ in range(config.num_layers)
    )
    lm_head = None if config.tied_embeddings else dense(h, config.vocab_size)
    return LlamaWeights(embed, layers, np.ones(h, dtype=np.float32), lm_head)


def _simd_level() -> str:
    """numpy's highest SIMD target in use (its float32 exp differs by level)."""
    import importlib

    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # numpy < 2
        umath = importlib.import_module("numpy.core._multiarray_umath")
    features: dict[str, bool] = umath.__cpu_features__
    for name in ("AVX512_SKX", "AVX512F", "AVX2", "ASIMD", "SSE2"):
        if features.get(name):
            return name
    return "baseline"


class Model:
    """A decoder with W8A8-quantised linear layers and exact attention (see npu_sim.ops).

    weights: float weights to quantise (e.g. from a GGUF file); None draws seeded random
    weights from `config.seed`. blas_threads: OpenBLAS threads used while `forward` runs
    (process-wide, restored after each call; None leaves BLAS alone). Results are
    bit-identical for any value; 1 is fastest for this model's small matmuls on a busy
    machine (see `npu_sim.blas`). wide_context_bytes: bound of the decode contexts kept
    widened across steps (`npu_sim.wide_context`; 0 turns it off), with a counted pool
    only (a bare array pool is widened every step). It changes speed and memory only.

    Thread contract: `forward` mutates the KV pool, a lazily grown RoPE table and the
    widened-context cache, so call it from one thread at a time (the engine thread), and
    nothing may write the blocks of the batch's contexts while it runs.

    Why the bits do not depend on it: with a counted pool (`npu_sim.kv_pool`) a kept
    block is used only while its write generation is unchanged, and every writer bumps
    it (all others get read-only bytes). verify_wide_context: also widen every
    kept context from scratch each step and raise `RuntimeError` on any difference
    (slow; for tests and debugging).
    """

    def __init__(
        self,
        config: ModelConfig,
        weights: LlamaWeights | None = None,
        *,
        blas_threads: int | None = 1,
        wide_context_bytes: int = DEFAULT_WIDE_CONTEXT_BYTES,
        verify_wide_context: bool = False,
    ) -> None:
        if blas_threads is not None and blas_threads < 1:
            raise ValueError(f"blas_threads must be >= 1 or None, got {blas_threads}")
        self._config = config
        self._blas_threads = blas_threads
        w = weights if weights is not None else random_weights(config)
        _check_shapes(config, w)
        self._embed = np.ascontiguousarray(w.embed, dtype=np.float32)
        self._layers = tuple(
            _Layer(
                attn_norm=np.asarray(lw.attn_norm, dtype=np.float32),
                wqkv=QuantizedLinear.from_float(np.concatenate([lw.wq, lw.wk, lw.wv], axis=1)),
                wo=QuantizedLinear.from_float(lw.wo),
                mlp_norm=np.asarray(lw.mlp_norm, dtype=np.float32),
                w_gate_up=QuantizedLinear.from_float(np.concatenate([lw.w_gate, lw.w_up], axis=1)),
                w_down=QuantizedLinear.from_float(lw.w_down),
            )
            for lw in w.layers
        )
        self._final_norm = np.asarray(w.final_norm, dtype=np.float32)
        self._lm_head = QuantizedLinear.from_float(w.embed.T if w.lm_head is None else w.lm_head)
        self._rope = RopeTable(config.head_dim, config.rope_theta)
        self._head_scale = float(1.0 / np.sqrt(config.head_dim))
        self._wide = WideContext(config.num_layers, wide_context_bytes)
        self._verify_wide = verify_wide_context

    @property
    def numerics_id(self) -> str:
        """What the model's KV bytes and logits depend on, as a short stable string.

        The config (and so the weights), the numerics version, numpy's version and its
        SIMD level change result bits; the BLAS kernel does not (exact integer GEMMs).
        A cache of KV blocks is valid for one numerics_id only: the server puts it in
        every block hash.
        """
        fingerprint = "|".join(
            (repr(self._config), str(NUMERICS_VERSION), np.__version__, _simd_level())
        )
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()
        return f"{self._config.name}.{digest}"

    @property
    def config(self) -> ModelConfig:
        return self._config

    def kv_pool_shape(self, num_blocks: int, block_size: int) -> tuple[int, ...]:
        """Shape of a KV pool this model can use."""
        c = self._config
        return (num_blocks, c.num_layers, 2, block_size, c.num_kv_heads, c.head_dim)

    def release(self, seq_keys: Iterable[Hashable]) -> None:
        """These sequences (`SeqChunk.seq_key`) finished: a new sequence on the blocks
        they leave in the pool may take their kept decode contexts (speed only)."""
        self._wide.release(row_key(k) for k in seq_keys)

    def forward(self, batch: Sequence[SeqChunk], kv_pool: KVPool | np.ndarray) -> np.ndarray:
        """Run one model step over `batch`; return fp32 logits (rows, vocab_size).

        One logits row per chunk with `needs_logits`, in batch order. Writes every new
        token's K/V into `kv_pool` (a counted `KVPool` through its `write_tokens`, or a
        bare array) and attends by reading the whole context back from the pool.
        Preconditions (checked, `ValueError`): the pool matches the model, chunks are
        non-empty with valid token ids, block tables cover their chunks, no two chunks
        write the same slot, no two decodes share a `seq_key`. Not checked: a chunk must
        not write a block another chunk of the same batch reads.
        """
        kv = pool_bytes(kv_pool)
        self._check_pool(kv)
        if not batch:
            return np.zeros((0, self._config.vocab_size), dtype=np.float32)
        generation = None if isinstance(kv_pool, np.ndarray) else kv_pool.generation
        with blas_threads_limited(self._blas_threads):
            return self._forward(batch, kv_pool, kv, generation)

    def _forward(
        self,
        batch: Sequence[SeqChunk],
        kv_pool: KVPool | np.ndarray,
        kv: np.ndarray,
        generation: np.ndarray | None,
    ) -> np.ndarray:
        cfg = self._config
        block_size = kv.shape[3]
        token_ids, positions, slot_blocks = plan_batch(batch, kv, cfg.vocab_size)
        slot_offsets = positions % block_size
        x = self._embed[token_ids]
        cos, sin = self._rope.lookup(positions)
        decode_groups, patches = group_decodes(batch, cfg, self._wide, kv, generation, slot_blocks)
        nh, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        new_kv = np.empty((token_ids.shape[0], 2, kvh, hd), dtype=kv.dtype)
        for layer_idx, lw in enumerate(self._layers):
            qkv = linear(rms_norm(x, lw.attn_norm, cfg.rms_eps), lw.wqkv)
            q = apply_rope(qkv[:, : nh * hd].reshape(-1, nh, hd), cos, sin)
            k = apply_rope(qkv[:, nh * hd : (nh + kvh) * hd].reshape(-1, kvh, hd), cos, sin)
            v = qkv[:, (nh + kvh) * hd :].reshape(-1, kvh, hd)
            new_kv[:, 0] = quantize_k(k)
            new_kv[:, 1] = quantize_v(v)
            if generation is not None and patches is not None:
                before = generation[patches.blocks, layer_idx]  # a copy: fancy indexing
            write_tokens(kv_pool, slot_blocks, slot_offsets, layer_idx, new_kv)
            if generation is not None and patches is not None:
                self._wide.patch(
                    generation,
                    layer_idx,
                    patches.rows,
                    patches.positions,
                    patches.blocks,
                    before,
                    new_kv[patches.batch_rows],
                )
            attn = self._attention(batch, decode_groups, q, kv, generation, layer_idx)
            x = x + linear(attn, lw.wo)
            gate_up = linear(rms_norm(x, lw.mlp_norm, cfg.rms_eps), lw.w_gate_up)
            inter = cfg.intermediate_size
            x = x + linear(silu_mul(gate_up[:, :inter], gate_up[:, inter:]), lw.w_down)

        ends = np.cumsum([len(c.token_ids) for c in batch]) - 1
        logit_rows = [int(end) for end, c in zip(ends, batch, strict=True) if c.needs_logits]
        if not logit_rows:
            return np.zeros((0, cfg.vocab_size), dtype=np.float32)
        final = rms_norm(x[logit_rows], self._final_norm, cfg.rms_eps)
        return linear(final, self._lm_head)

    def _attention(
        self,
        batch: Sequence[SeqChunk],
        decode_groups: Sequence[DecodeGroup],
        q: np.ndarray,
        kv_pool: np.ndarray,
        generation: np.ndarray | None,
        layer_idx: int,
    ) -> np.ndarray:
        """Attention output (rows, num_heads * head_dim) for every row of the batch.

        Single-token chunks (decodes) run batched per group (contexts widened once and
        kept across steps where `WideContext` has room); longer chunks run on their own
        in tiles of query rows. Exactness makes the grouping irrelevant to the bits.
        """
        out = np.empty((q.shape[0], q.shape[1] * q.shape[2]), dtype=np.float32)
        starts = np.cumsum([0] + [len(c.token_ids) for c in batch[:-1]])
        for group in decode_groups:
            if group.first_row is not None:
                assert generation is not None  # only a counted pool gets rows
                k_t, v = self._wide.gather(
                    kv_pool, generation, layer_idx, group.first_row, group.table, group.ctx
                )
                if self._verify_wide:
                    _verify(k_t, v, kv_pool, layer_idx, group)
            else:
                k_t, v = _gather_table(kv_pool, layer_idx, group.table, group.ctx, np.float32)
            rows = starts[group.members]
            pos = np.array(group.ctx, dtype=np.int64)[:, None] - 1
            out[rows] = attend(q[rows][:, None], k_t, v, pos, self._head_scale)[:, 0]
        for i, chunk in enumerate(batch):
            n = len(chunk.token_ids)
            if n == 1:
                continue
            k_t, v = _gather(kv_pool, layer_idx, [chunk], np.float32)
            for lo in range(0, n, _ROW_TILE):
                hi = min(lo + _ROW_TILE, n)
                ctx = chunk.start_pos + hi
                pos = np.arange(chunk.start_pos + lo, chunk.start_pos + hi)[None]
                tile = slice(starts[i] + lo, starts[i] + hi)
                out[tile] = attend(
                    q[tile][None], k_t[..., :ctx], v[:, :, :ctx], pos, self._head_scale
                )[0]
        return out

    def _check_pool(self, kv_pool: np.ndarray) -> None:
        c = self._config
        expected = (c.num_layers, 2, c.num_kv_heads, c.head_dim)
        shape = kv_pool.shape
        if kv_pool.ndim != 6 or (shape[1], shape[2], shape[4], shape[5]) != expected:
            raise ValueError(f"kv_pool shape {shape} does not fit model {c.name!r}")
        if kv_pool.dtype != np.dtype(c.kv_dtype):
            raise ValueError(f"kv_pool dtype {kv_pool.dtype} != config kv_dtype {c.kv_dtype}")


def _gather(
    kv_pool: np.ndarray, layer_idx: int, chunks: Sequence[SeqChunk], key_dtype: type[np.floating]
) -> tuple[np.ndarray, np.ndarray]:
    """The chunks' contexts for one layer (see `_gather_table`)."""
    block_size = kv_pool.shape[3]
    ctx = [c.start_pos + len(c.token_ids) for c in chunks]
    num_blocks = -(-max(ctx) // block_size)
    table = np.zeros((len(chunks), num_blocks), dtype=np.int64)
    for b, (c, n) in enumerate(zip(chunks, ctx, strict=True)):
        nb = -(-n // block_size)
        table[b, :nb] = np.asarray(c.block_table[:nb], dtype=np.int64)
    return _gather_table(kv_pool, layer_idx, table, ctx, key_dtype)


def _gather_table(
    kv_pool: np.ndarray,
    layer_idx: int,
    table: np.ndarray,
    ctx: Sequence[int],
    key_dtype: type[np.floating],
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts of `ctx[b]` tokens in blocks `table[b]` (B, nb) for one layer: K as
    (B, kvh, hd, T) in `key_dtype`, V as float64 (B, kvh, T, hd); T = nb blocks.

    Both are transposed views of token-major copies (one gathering and one widening pass
    each), which BLAS reads without another copy. Any key dtype gives the same scores:
    `attend`'s products are exact. Positions past a context hold arbitrary K (masked by
    `attend`) and zero V (masked weights are exactly 0 and must never meet a NaN or inf).
    """
    keys = widen(kv_pool[table, layer_idx, 0], key_dtype)  # (B, nb, bs, kvh, hd)
    bsz, nb, bs, kvh, hd = keys.shape
    values = widen(kv_pool[table, layer_idx, 1], np.float64).reshape(bsz, nb * bs, kvh, hd)
    for b, n in enumerate(ctx):
        values[b, n:] = 0.0
    k_t = keys.reshape(bsz, nb * bs, kvh, hd).transpose(0, 2, 3, 1)
    return k_t, values.transpose(0, 2, 1, 3)


def _verify(
    k_t: np.ndarray, v: np.ndarray, kv_pool: np.ndarray, layer_idx: int, group: DecodeGroup
) -> None:
    """Raise `RuntimeError` unless kept contexts equal a widening from scratch, bit for
    bit, within each context, and V is finite past it (its weights there are 0)."""
    k_ref, v_ref = _gather_table(kv_pool, layer_idx, group.table, group.ctx, np.float32)
    for b, n in enumerate(group.ctx):
        same_k = k_t[b, ..., :n].tobytes() == k_ref[b, ..., :n].tobytes()
        same_v = v[b, :, :n].tobytes() == v_ref[b, :, :n].tobytes()
        if not same_k or not same_v or not np.isfinite(v[b, :, n:]).all():
            raise RuntimeError(
                f"kept context of layer {layer_idx} differs from the pool's bytes "
                f"(sequence of block {int(group.table[b, 0])}, {n} tokens)"
            )


def _check_shapes(config: ModelConfig, w: LlamaWeights) -> None:
    h, i = config.hidden_size, config.intermediate_size
    q_width = config.num_heads * config.head_dim
    kv_width = config.num_kv_heads * config.head_dim
    if w.embed.shape != (config.vocab_size, h) or len(w.layers) != config.num_layers:
        raise ValueError(f"weights do not fit model {config.name!r}")
    for lw in w.layers:
        shapes = (
            lw.wq.shape,
            lw.wk.shape,
            lw.wv.shape,
            lw.wo.shape,
            lw.w_gate.shape,
            lw.w_up.shape,
            lw.w_down.shape,
        )
        expected = (
            (h, q_width),
            (h, kv_width),
            (h, kv_width),
            (q_width, h),
            (h, i),
            (h, i),
            (i, h),
        )
        if shapes != expected:
            raise ValueError(f"layer weights {shapes} do not fit model {config.name!r}")
