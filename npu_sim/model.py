"""A llama-style decoder in numpy that attends over a paged KV pool.

The model owns only its weights; the KV pool (`[num_blocks, num_layers, 2, block_size,
num_kv_heads, head_dim]`, axis 2: K=0 / V=1, dtype `config.kv_dtype`) is passed into every
forward, so the cache manager can spill and reload blocks behind the model's back.

Batch invariance (bit for bit): the logits and KV bytes of a token depend only on the
token, its position and the KV bytes of its context, never on the rest of the batch,
chunk boundaries or row position. See `npu_sim.ops` for how.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from npu_sim.blas import blas_core_name, blas_threads_limited
from npu_sim.model_config import ModelConfig
from npu_sim.ops import (
    RopeTable,
    apply_rope,
    attend_rows,
    pad_rows,
    rms_norm,
    silu_mul,
    tiled_matmul,
    widen_to_f32,
)

# Bump when a change here changes result bits (op order, tiling, dtype handling).
NUMERICS_VERSION = 1

@dataclass(slots=True)
class SeqChunk:
    """A run of consecutive tokens of one sequence to push through the model.

    token_ids: the new tokens (at least one); token_ids[0] sits at absolute `start_pos`,
        and positions < start_pos already have their KV in the pool.
    block_table: pool block ids covering positions [0, start_pos + len(token_ids)).
    needs_logits: return the logits of the chunk's last token.
    """

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    needs_logits: bool = True


@dataclass(frozen=True, slots=True)
class _LayerWeights:
    attn_norm: np.ndarray  # (H,)
    wqkv: np.ndarray  # (H, (num_heads + 2 * num_kv_heads) * head_dim)
    wo: np.ndarray  # (num_heads * head_dim, H)
    mlp_norm: np.ndarray  # (H,)
    w_gate_up: np.ndarray  # (H, 2 * intermediate)
    w_down: np.ndarray  # (intermediate, H)


def _dense(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
    return w * np.float32(1.0 / np.sqrt(fan_in))


class Model:
    """Deterministic random-weight decoder (weights drawn from `config.seed`, fp32).

    blas_threads: OpenBLAS threads used while `forward` runs (process-wide, restored after
    each call; None leaves BLAS alone). Default 1: the many small matmuls lose more to
    thread wake-ups than they gain, catastrophically so on a busy machine (see
    `npu_sim.blas`). Results are bit-identical for any value.

    Thread contract: `forward` mutates the KV pool and a lazily grown RoPE table, so call
    it from one thread at a time (the engine thread).
    """

    def __init__(self, config: ModelConfig, *, blas_threads: int | None = 1) -> None:
        if blas_threads is not None and blas_threads < 1:
            raise ValueError(f"blas_threads must be >= 1 or None, got {blas_threads}")
        self._config = config
        self._blas_threads = blas_threads
        rng = np.random.default_rng(config.seed)
        h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
        qkv_width = (config.num_heads + 2 * config.num_kv_heads) * hd
        # Embedding rows ~ N(0, 1): the first RMSNorm rescales them anyway.
        self._embed = rng.standard_normal((config.vocab_size, h), dtype=np.float32)
        self._layers = tuple(
            _LayerWeights(
                attn_norm=np.ones(h, dtype=np.float32),
                wqkv=_dense(rng, h, qkv_width),
                wo=_dense(rng, config.num_heads * hd, h),
                mlp_norm=np.ones(h, dtype=np.float32),
                w_gate_up=_dense(rng, h, 2 * inter),
                w_down=_dense(rng, inter, h),
            )
            for _ in range(config.num_layers)
        )
        self._final_norm = np.ones(h, dtype=np.float32)
        self._lm_head = _dense(rng, h, config.vocab_size)
        self._rope = RopeTable(hd, config.rope_theta)
        self._q_scale = np.float32(1.0 / np.sqrt(hd))

    @property
    def numerics_id(self) -> str:
        """What the model's KV bytes and logits depend on, as a short stable string.

        The config (weights come from its seed), the numerics version of this module,
        numpy's version and the BLAS kernel family all change result bits, so a cache of
        KV blocks is only valid for one numerics_id (the server puts it in every block
        hash: a data dir moved to another CPU type is not silently reused).
        """
        fingerprint = "|".join(
            (repr(self._config), str(NUMERICS_VERSION), np.__version__, blas_core_name() or "?")
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

    def forward(self, batch: Sequence[SeqChunk], kv_pool: np.ndarray) -> np.ndarray:
        """Run one model step over `batch`; return fp32 logits (rows, vocab_size).

        One logits row per chunk with `needs_logits`, in batch order. Writes every new
        token's K/V into `kv_pool` (cast to the pool dtype) and attends by reading the whole
        context back from the pool. Preconditions (checked, `ValueError`): the pool matches
        the model, chunks are non-empty with valid token ids, block tables cover their
        chunks and no two chunks write the same slot. Not checked: a chunk must not write a
        block another chunk of the same batch reads.
        """
        self._check_pool(kv_pool)
        if not batch:
            return np.zeros((0, self._config.vocab_size), dtype=np.float32)
        with blas_threads_limited(self._blas_threads):
            return self._forward(batch, kv_pool)

    def _forward(self, batch: Sequence[SeqChunk], kv_pool: np.ndarray) -> np.ndarray:
        cfg = self._config
        block_size = kv_pool.shape[3]
        token_ids, positions, slot_blocks = self._plan(batch, kv_pool)
        num_rows = token_ids.shape[0]
        slot_offsets = positions % block_size

        x = pad_rows(self._embed[token_ids])
        cos, sin = self._rope.lookup(positions)
        nh, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        attn = np.zeros((x.shape[0], nh * hd), dtype=np.float32)
        for layer_idx, lw in enumerate(self._layers):
            qkv = tiled_matmul(rms_norm(x, lw.attn_norm, cfg.rms_eps), lw.wqkv)[:num_rows]
            q = apply_rope(qkv[:, : nh * hd].reshape(num_rows, nh, hd), cos, sin)
            q *= self._q_scale
            k = apply_rope(qkv[:, nh * hd : (nh + kvh) * hd].reshape(num_rows, kvh, hd), cos, sin)
            v = qkv[:, (nh + kvh) * hd :].reshape(num_rows, kvh, hd)
            kv_pool[slot_blocks, layer_idx, 0, slot_offsets] = k
            kv_pool[slot_blocks, layer_idx, 1, slot_offsets] = v

            row = 0
            for chunk in batch:
                n = len(chunk.token_ids)
                ctx_len = chunk.start_pos + n
                k_t, v_ctx = _gather_context(kv_pool, layer_idx, chunk.block_table, ctx_len)
                attend_rows(q[row : row + n], k_t, v_ctx, chunk.start_pos, attn[row : row + n])
                row += n
            x = x + tiled_matmul(attn, lw.wo)

            gate_up = tiled_matmul(rms_norm(x, lw.mlp_norm, cfg.rms_eps), lw.w_gate_up)
            inter = cfg.intermediate_size
            x = x + tiled_matmul(silu_mul(gate_up[:, :inter], gate_up[:, inter:]), lw.w_down)

        ends = np.cumsum([len(c.token_ids) for c in batch]) - 1
        logit_rows = [int(end) for end, c in zip(ends, batch, strict=True) if c.needs_logits]
        if not logit_rows:
            return np.zeros((0, cfg.vocab_size), dtype=np.float32)
        final = rms_norm(x, self._final_norm, cfg.rms_eps)
        return tiled_matmul(pad_rows(final[logit_rows]), self._lm_head)[: len(logit_rows)]

    def _check_pool(self, kv_pool: np.ndarray) -> None:
        c = self._config
        expected = (c.num_layers, 2, c.num_kv_heads, c.head_dim)
        shape = kv_pool.shape
        if kv_pool.ndim != 6 or (shape[1], shape[2], shape[4], shape[5]) != expected:
            raise ValueError(f"kv_pool shape {shape} does not fit model {c.name!r}")
        if kv_pool.dtype != np.dtype(c.kv_dtype):
            raise ValueError(f"kv_pool dtype {kv_pool.dtype} != config kv_dtype {c.kv_dtype}")

    def _plan(
        self, batch: Sequence[SeqChunk], kv_pool: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate the batch; return token ids, absolute positions and pool block per row."""
        num_blocks, block_size = kv_pool.shape[0], kv_pool.shape[3]
        ids, positions, blocks = [], [], []
        for chunk in batch:
            n = len(chunk.token_ids)
            if n == 0 or chunk.start_pos < 0:
                raise ValueError("a chunk needs >= 1 token and start_pos >= 0")
            chunk_ids = np.asarray(chunk.token_ids, dtype=np.int64)
            if chunk_ids.min() < 0 or chunk_ids.max() >= self._config.vocab_size:
                raise ValueError("token id outside the vocabulary")
            table = np.asarray(chunk.block_table, dtype=np.int64)
            num_needed = -(-(chunk.start_pos + n) // block_size)
            if table.shape[0] < num_needed:
                raise ValueError(f"block table covers {table.shape[0]} blocks, need {num_needed}")
            if table[:num_needed].min() < 0 or table[:num_needed].max() >= num_blocks:
                raise ValueError("block id outside the KV pool")
            pos = np.arange(chunk.start_pos, chunk.start_pos + n, dtype=np.int64)
            ids.append(chunk_ids)
            positions.append(pos)
            blocks.append(table[pos // block_size])
        all_pos, all_blocks = np.concatenate(positions), np.concatenate(blocks)
        slots = all_blocks * block_size + all_pos % block_size
        if np.unique(slots).shape[0] != slots.shape[0]:
            raise ValueError("two tokens of the batch write the same KV slot")
        return np.concatenate(ids), all_pos, all_blocks


def _gather_context(
    kv_pool: np.ndarray, layer_idx: int, block_table: Sequence[int], ctx_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's context [0, ctx_len) from the pool as fp32 (K transposed, V).

    Returns K as (num_kv_heads, head_dim, >= ctx_len) and V as (num_kv_heads, >= ctx_len,
    head_dim); positions past ctx_len are whatever the last block holds.
    """
    block_size = kv_pool.shape[3]
    num_blocks = -(-ctx_len // block_size)
    table = np.asarray(block_table[:num_blocks], dtype=np.int64)
    blocks = kv_pool[table, layer_idx]  # (nb, 2, block_size, kvh, hd)
    kvh, hd = blocks.shape[3], blocks.shape[4]
    width = num_blocks * block_size
    # Reorder in the narrow pool dtype first (half the bytes), then widen contiguously.
    k_t = widen_to_f32(np.ascontiguousarray(blocks[:, 0].transpose(2, 3, 0, 1)))
    v = widen_to_f32(np.ascontiguousarray(blocks[:, 1].transpose(2, 0, 1, 3)))
    return k_t.reshape(kvh, hd, width), v.reshape(kvh, width, hd)
