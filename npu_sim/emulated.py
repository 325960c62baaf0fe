"""Emulated execution: a real model's KV shape and clock, without its arithmetic.

`EmulatedModel` plays the role of `npu_sim.model.Model` (it satisfies
`npu_sim.executor.StepModel`) for a shape that cannot run in numpy here (llama-3-8b,
qwen3-8b, ...): the executor charges each step the calibrated roofline cost of that shape,
and the KV blocks it writes have that model's layout, `[num_layers, 2, block_size,
num_kv_heads, stored_head_dim]` in fp16, so its bytes travel through HBM, Redis and LMDB
like real KV.

**Stored fraction.** `kv_bytes_fraction` keeps `stored_head_dim = head_dim * fraction` of
each head's elements (it must come out a whole number): a block physically holds that
fraction of its logical bytes, and everything else (layers, K/V, block size, heads) is the
real layout. Capacities and the modelled clock count logical bytes; the physical bytes
are what Redis and LMDB really move, checksummed like any block.

**Contents.** Deterministic, a function of the block's identity. Token `p` of a sequence
carries a 56-bit prefix hash `P_p = (P_{p-1} * B + token_id_p + 1) mod 2^56` (`P_-1 =
ROOT_PREFIX`, `B` a fixed odd constant), where `P_{p-1}` is read *from the KV pool*: the
first CHAIN_ELEMENTS (4) stored values of token p-1's row (layer 0, K then V, KV heads in
order) hold its 14-bit pieces, most significant first. The rest of the row
(`num_layers * 2 * num_kv_heads * stored_head_dim` values in all) holds, at element j in
row order, the top 14 bits of `(h_p * m_j) mod 2^64`, with `h_p = mix(P_p ^ p * C)` and
fixed odd multipliers `m_j`. Every value is a finite fp16 bit pattern in [0, 2). So a
token's KV depends on every earlier token and on its position, and a chunk resumed after
a cache hit continues from the bytes it reads back. `P` is a polynomial hash, so a
chunk's hashes come from one cumulative sum (no per-token Python loop).

**Tokens.** The logits of a chunk's last token are uniform in [0, LOGIT_SCALE), the top
24 bits of `seed * v_j mod 2^64` for fixed odd multipliers `v_j` per vocabulary id, with
`seed = mix(digest ^ h_last)`, where `digest` is a weighted sum (mod 2^64, odd weights per
position) over the *attended bytes actually read*: for every context position, in the
first and the last layer, K and V, the value at KV head 0, stored element 0. Every
attended block is therefore sampled at every token slot it holds, and a block with wrong
or corrupt bytes there (or at a chain element) changes the output with overwhelming
probability. Tokens are exactly as batch- and chunk-invariant as the numpy model's: a
sequence's results depend only on its own tokens and KV bytes.

Thread contract: like `Model`, call `forward` from one thread at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from typing import Final

import numpy as np

from npu_sim.kv_pool import KVPool, pool_bytes, write_tokens
from npu_sim.model import SeqChunk
from npu_sim.model_config import ModelConfig
from npu_sim.tokenizer import VOCAB_SIZE

# Bump when a change here changes emulated KV bytes or tokens.
EMULATION_VERSION: Final = 1
CHAIN_ELEMENTS: Final = 4  # 4 x 14 bits of prefix hash carried by each token's row
VALUE_BITS: Final = 14  # sign 0, exponent <= 15: a finite fp16 in [0, 2)
PREFIX_BITS: Final = CHAIN_ELEMENTS * VALUE_BITS  # 56
ROOT_PREFIX: Final = 0x00C0FFEE15BAD5EED & ((1 << PREFIX_BITS) - 1)
PREFIX_BASE: Final = 0x100000001B3  # FNV-1a 64 prime: odd, so invertible mod 2^64
_VALUE_SHIFT: Final = 64 - VALUE_BITS
DEFAULT_KV_BYTES_FRACTION: Final = 1 / 64
LOGIT_SCALE: Final = 8.0

_M64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_C1: Final = 0xBF58476D1CE4E5B9
_C2: Final = 0x94D049BB133111EB
_TOKEN_MUL: Final = 0xD6E8FEB86659FD93
_POS_MUL: Final = 0xA0761D6478BD642F


def _mix(x: int) -> int:
    """splitmix64 finaliser of `x + GOLDEN` (scalar)."""
    z = (x + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def _mix_array(x: np.ndarray) -> np.ndarray:
    """`_mix` over a uint64 array (wrapping arithmetic)."""
    z = x + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
    return z ^ (z >> np.uint64(31))


def stored_head_dim(config: ModelConfig, kv_bytes_fraction: float) -> int:
    """Elements of each head stored per token; `ValueError` unless a whole number >= 1."""
    if not 0 < kv_bytes_fraction <= 1:
        raise ValueError(f"kv_bytes_fraction must be in (0, 1], got {kv_bytes_fraction}")
    stored = config.head_dim * kv_bytes_fraction
    if stored < 1 or abs(stored - round(stored)) > 1e-9:
        raise ValueError(
            f"kv_bytes_fraction {kv_bytes_fraction} of head_dim {config.head_dim} is not a "
            "whole number of elements"
        )
    return round(stored)


class EmulatedModel:
    """Writes and reads real-layout KV blocks of `config`; see the module docstring."""

    def __init__(
        self, config: ModelConfig, kv_bytes_fraction: float = DEFAULT_KV_BYTES_FRACTION
    ) -> None:
        if np.dtype(config.kv_dtype) != np.float16:
            raise ValueError("emulation stores fp16 KV")
        self._config = config
        self._fraction = kv_bytes_fraction
        self._stored_head_dim = stored_head_dim(config, kv_bytes_fraction)
        self._row_shape = (config.num_layers, 2, config.num_kv_heads, self._stored_head_dim)
        self._row_len = int(np.prod(self._row_shape))
        if 2 * config.num_kv_heads * self._stored_head_dim < CHAIN_ELEMENTS:
            raise ValueError("a layer's K and V of one token must hold >= 4 stored values")
        # Odd per-element multipliers: element j of a token's row is the top 14 bits of
        # (h * multiplier_j) mod 2^64 (one multiply and one shift per byte pair).
        self._row_multipliers = _mix_array(np.arange(self._row_len, dtype=np.uint64)) | np.uint64(1)
        self._chain_shifts = np.array(
            [VALUE_BITS * (CHAIN_ELEMENTS - 1 - j) for j in range(CHAIN_ELEMENTS)],
            dtype=np.uint64,
        )
        self._base_powers = np.ones(1, dtype=np.uint64)  # B^k mod 2^64, grown on demand
        self._inverse_powers = np.ones(1, dtype=np.uint64)  # B^-k mod 2^64
        self._vocab_multipliers = _mix_array(
            np.arange(VOCAB_SIZE, dtype=np.uint64) + np.uint64(1 << 32)
        ) | np.uint64(1)
        self._sampled_layers = np.array(sorted({0, config.num_layers - 1}), dtype=np.int64)
        self._weights = np.zeros(0, dtype=np.uint64)

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def stored_head_dim(self) -> int:
        return self._stored_head_dim

    @property
    def numerics_id(self) -> str:
        """What emulated KV bytes and tokens depend on (goes into every block hash)."""
        fingerprint = f"{self._config!r}|emu{EMULATION_VERSION}|{self._stored_head_dim}"
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()
        return f"{self._config.name}.emu.{digest}"

    def kv_pool_shape(self, num_blocks: int, block_size: int) -> tuple[int, ...]:
        c = self._config
        return (num_blocks, c.num_layers, 2, block_size, c.num_kv_heads, self._stored_head_dim)

    def release(self, seq_keys: Iterable[Hashable]) -> None:
        """Nothing to do: this model keeps no state per sequence."""

    def forward(self, batch: Sequence[SeqChunk], kv_pool: KVPool | np.ndarray) -> np.ndarray:
        """Write each chunk's KV into `kv_pool` (a counted pool or a bare array); return
        logits (rows, VOCAB_SIZE), one row per chunk with `needs_logits`, in batch order.

        Preconditions (checked, `ValueError`): the pool has this model's shape and fp16,
        token ids are in the tokenizer's vocabulary, block tables cover their chunks.
        """
        kv = pool_bytes(kv_pool)
        self._check_pool(kv)
        if not batch:
            return np.zeros((0, VOCAB_SIZE), dtype=np.float32)
        # One pass over the whole batch: a few numpy calls per chunk (its prefix hashes),
        # the rest for all chunks together.
        u16 = kv.view(np.uint16)
        block_size = kv.shape[3]
        tables = [self._checked_table(c, kv.shape[0], block_size) for c in batch]
        prefixes = self._read_prefixes(u16, batch, tables, block_size)
        total = sum(len(c.token_ids) for c in batch)
        hashes = np.empty(total, dtype=np.uint64)
        write_blocks = np.empty(total, dtype=np.int64)
        positions = np.empty(total, dtype=np.int64)
        row = 0
        for chunk, table, prefix in zip(batch, tables, prefixes, strict=True):
            start, n = chunk.start_pos, len(chunk.token_ids)
            hashes[row : row + n] = self._prefix_hashes(chunk.token_ids, prefix)
            pos = np.arange(start, start + n)
            positions[row : row + n] = pos
            write_blocks[row : row + n] = table[pos // block_size]
            row += n
        mask = np.uint64((1 << PREFIX_BITS) - 1)
        hashes &= mask
        states = _mix_array(hashes ^ (positions.astype(np.uint64) * np.uint64(_POS_MUL)))
        ends = np.cumsum([len(c.token_ids) for c in batch]) - 1
        last_state = [int(x) for x in states[ends]]
        values = (states[:, None] * self._row_multipliers[None, :]) >> np.uint64(_VALUE_SHIFT)
        values[:, :CHAIN_ELEMENTS] = (hashes[:, None] >> self._chain_shifts[None, :]) & np.uint64(
            (1 << VALUE_BITS) - 1
        )
        rows = values.astype(np.uint16).reshape(total, *self._row_shape)
        write_tokens(kv_pool, write_blocks, positions % block_size, None, rows.view(np.float16))
        wanted = [i for i, c in enumerate(batch) if c.needs_logits]
        if not wanted:
            return np.zeros((0, VOCAB_SIZE), dtype=np.float32)
        digests = self._digests(u16, [batch[i] for i in wanted], [tables[i] for i in wanted])
        seeds = np.array(
            [_mix(d ^ last_state[i]) for d, i in zip(digests, wanted, strict=True)],
            dtype=np.uint64,
        )
        # Logits uniform in [0, LOGIT_SCALE): the top 24 bits of seed x odd multiplier.
        top = (seeds[:, None] * self._vocab_multipliers[None, :]) >> np.uint64(40)
        return top.astype(np.float32) * np.float32(LOGIT_SCALE / (1 << 24))

    def _checked_table(self, chunk: SeqChunk, num_pool_blocks: int, block_size: int) -> np.ndarray:
        """The chunk's block table up to its context, validated (`ValueError`)."""
        n, start = len(chunk.token_ids), chunk.start_pos
        if n == 0 or start < 0:
            raise ValueError("a chunk needs >= 1 token and start_pos >= 0")
        num_blocks = -(-(start + n) // block_size)
        if len(chunk.block_table) < num_blocks:
            raise ValueError(
                f"block table covers {len(chunk.block_table)} blocks, need {num_blocks}"
            )
        table = np.asarray(chunk.block_table[:num_blocks], dtype=np.int64)
        if table.min() < 0 or table.max() >= num_pool_blocks:
            raise ValueError("block id outside the KV pool")
        return table

    def _prefix_hashes(self, token_ids: Sequence[int], prefix: int) -> np.ndarray:
        """P for each token of a chunk that continues prefix hash `prefix` (mod 2^64):
        P_k = B^k * (B * prefix + sum_{i<=k} u_i * B^-i), u_i = token_i + 1."""
        tokens = np.asarray(token_ids, dtype=np.int64)
        if tokens.min() < 0 or tokens.max() >= VOCAB_SIZE:
            raise ValueError("token id outside the vocabulary")
        n = tokens.shape[0]
        base, inverse = self._powers(n)
        terms = (tokens.astype(np.uint64) + np.uint64(1)) * inverse
        head = np.uint64((prefix * PREFIX_BASE) & _M64)
        return base * (np.cumsum(terms, dtype=np.uint64) + head)

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._base_powers.shape[0] < n:
            size = max(n, 2 * self._base_powers.shape[0], 1024)
            base, inverse = 1, 1
            inv = pow(PREFIX_BASE, -1, 1 << 64)
            powers, inverses = [], []
            for _ in range(size):
                powers.append(base)
                inverses.append(inverse)
                base = (base * PREFIX_BASE) & _M64
                inverse = (inverse * inv) & _M64
            self._base_powers = np.array(powers, dtype=np.uint64)
            self._inverse_powers = np.array(inverses, dtype=np.uint64)
        return self._base_powers[:n], self._inverse_powers[:n]

    def _read_prefixes(
        self,
        u16: np.ndarray,
        batch: Sequence[SeqChunk],
        tables: list[np.ndarray],
        block_size: int,
    ) -> list[int]:
        """Each chunk's prefix hash P_{start-1}: read from the pool (ROOT_PREFIX at 0)."""
        resumed = [i for i, c in enumerate(batch) if c.start_pos > 0]
        prefixes = [ROOT_PREFIX] * len(batch)
        if resumed:
            prev = np.array([batch[i].start_pos - 1 for i in resumed], dtype=np.int64)
            blocks = np.array(
                [tables[i][p // block_size] for i, p in zip(resumed, prev.tolist(), strict=True)],
                dtype=np.int64,
            )
            rows = u16[blocks, 0, :, prev % block_size].reshape(len(resumed), -1)
            for i, pieces in zip(resumed, rows[:, :CHAIN_ELEMENTS].tolist(), strict=True):
                value = 0
                for piece in pieces:
                    value = (value << VALUE_BITS) | piece
                prefixes[i] = value
        return prefixes

    def _digests(
        self, u16: np.ndarray, chunks: list[SeqChunk], tables: list[np.ndarray]
    ) -> list[int]:
        """Per chunk: weighted sum mod 2^64 over the sampled values of its context."""
        block_size = u16.shape[3]
        width = self._sampled_layers.shape[0] * 2  # values per position
        counts = [t.shape[0] for t in tables]
        blocks = np.concatenate(tables)
        # (blocks, sampled layers, K/V, block_size) -> (blocks, position-major values).
        sample = u16[blocks[:, None], self._sampled_layers[None, :], :, :, 0, 0]
        per_block = sample.transpose(0, 3, 1, 2).reshape(blocks.shape[0], block_size * width)
        per_row = block_size * width
        weights = self._weights_for(max(counts) * per_row).reshape(-1, per_row)
        row_weights = weights[np.concatenate([np.arange(c) for c in counts])]
        ends = np.cumsum(counts)
        for chunk, end in zip(chunks, ends.tolist(), strict=True):
            used = (chunk.start_pos + len(chunk.token_ids) - 1) % block_size + 1
            row_weights[end - 1, used * width :] = 0  # past the context in its last block
        sums = np.sum(per_block.astype(np.uint64) * row_weights, axis=1, dtype=np.uint64)
        starts = np.concatenate([[0], ends[:-1]])
        return [int(d) for d in np.add.reduceat(sums, starts, dtype=np.uint64)]

    def _weights_for(self, n: int) -> np.ndarray:
        if self._weights.shape[0] < n:
            size = max(n, 2 * self._weights.shape[0], 4096)
            idx = np.arange(size, dtype=np.uint64)
            self._weights = _mix_array(idx) | np.uint64(1)
        return self._weights[:n]

    def _check_pool(self, kv_pool: np.ndarray) -> None:
        c = self._config
        expected = (c.num_layers, 2, c.num_kv_heads, self._stored_head_dim)
        shape = kv_pool.shape
        if kv_pool.ndim != 6 or (shape[1], shape[2], shape[4], shape[5]) != expected:
            raise ValueError(f"kv_pool shape {shape} does not fit emulated {c.name!r}")
        if kv_pool.dtype != np.float16:
            raise ValueError(f"kv_pool dtype {kv_pool.dtype} is not float16")
