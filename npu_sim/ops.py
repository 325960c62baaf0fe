"""Batch-invariant numpy kernels for the simulated model.

The contract every function here keeps: the bits computed for one row (token) depend only
on that row's inputs, never on how many other rows share the call or where the row sits.
Plain `x @ W` does not keep it on OpenBLAS (M=1 takes a different kernel than M>=2, and
the kernel choice depends on M), so:

* linear layers run on fixed tiles of `TILE_ROWS` rows: the activation matrix is padded
  with zero rows to a multiple of `TILE_ROWS` and every BLAS call sees exactly that shape;
* attention runs per query row over exactly its own context, so every reduction (the
  softmax sum, the P@V contraction) has a length that depends only on the row's position;
* elementwise ops are exact IEEE operations or run on rows whose width is a multiple of
  the SIMD width, so no row ever lands in a vector-loop remainder.

Cross-machine bit equality is not promised: another CPU picks another BLAS kernel.
All functions are pure (except `RopeTable`'s lazy cache) and compute in float32.
"""

from __future__ import annotations

from typing import Final

import numpy as np

TILE_ROWS: Final = 16
_ROPE_BLOCK: Final = 1024  # RoPE table rows computed per (fixed-shape) call


def padded_rows(num_rows: int) -> int:
    """Smallest multiple of `TILE_ROWS` >= num_rows."""
    return -(-num_rows // TILE_ROWS) * TILE_ROWS


def pad_rows(x: np.ndarray) -> np.ndarray:
    """`x` (M, K) as a new float32 array with zero rows appended up to `padded_rows(M)`."""
    out = np.zeros((padded_rows(x.shape[0]), x.shape[1]), dtype=np.float32)
    out[: x.shape[0]] = x
    return out


def tiled_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`x @ w` computed as independent (TILE_ROWS, K) @ (K, N) products.

    `x` is (M, K) float32 with M a multiple of `TILE_ROWS` (see `pad_rows`); `w` is (K, N)
    float32. Each output row is bit-identical for any M and any row position.
    """
    if x.ndim != 2 or x.shape[0] % TILE_ROWS:
        raise ValueError(f"tiled_matmul needs (M, K) with M % {TILE_ROWS} == 0, got {x.shape}")
    m, k = x.shape
    tiles = np.ascontiguousarray(x, dtype=np.float32).reshape(m // TILE_ROWS, TILE_ROWS, k)
    # A stacked matmul calls BLAS once per (TILE_ROWS, K) tile, always with the same shape.
    return np.matmul(tiles, w).reshape(m, w.shape[1])


# fp16 -> fp32 by table look-up: exact (same bits as astype) and ~1.5-3x faster than numpy's
# own half-precision cast on this machine, which dominates a long-context decode step.
_F16_TO_F32: Final = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_F16_TO_F32.flags.writeable = False


def widen_to_f32(x: np.ndarray) -> np.ndarray:
    """A new C-contiguous float32 copy of float `x` (exact conversion)."""
    if x.dtype == np.float16:
        return np.take(_F16_TO_F32, np.ascontiguousarray(x).view(np.uint16))
    return np.array(x, dtype=np.float32, order="C")


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Row-wise RMSNorm of (M, H) `x` (each row reduced on its own, same length)."""
    mean_sq = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(mean_sq + np.float32(eps))) * weight


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU activation `silu(gate) * up`, elementwise."""
    g = np.ascontiguousarray(gate)
    with np.errstate(over="ignore"):  # exp(-g) -> inf for g << 0 gives silu -> -0, fine
        return (g / (np.float32(1.0) + np.exp(-g))) * up


class RopeTable:
    """cos/sin of RoPE angles per absolute position (float32, `head_dim // 2` columns).

    Angles are computed in float64 in blocks of fixed shape, so the value for a position
    never depends on which other positions were requested or when. Grows lazily; not
    thread-safe (the model runs on one thread).
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
        self._inv_freq = np.float64(theta) ** -exponents
        self._cos = np.empty((0, head_dim // 2), dtype=np.float32)
        self._sin = np.empty((0, head_dim // 2), dtype=np.float32)

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin), each (len(positions), head_dim // 2), for non-negative positions."""
        needed = int(positions.max()) + 1 if positions.size else 0
        while self._cos.shape[0] < needed:
            start = self._cos.shape[0]
            pos = np.arange(start, start + _ROPE_BLOCK, dtype=np.float64)
            angles = pos[:, None] * self._inv_freq[None, :]
            self._cos = np.concatenate([self._cos, np.cos(angles).astype(np.float32)])
            self._sin = np.concatenate([self._sin, np.sin(angles).astype(np.float32)])
        return self._cos[positions], self._sin[positions]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (M, heads, head_dim) `x` by per-row angles ("rotate half" convention)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty(x.shape, dtype=np.float32)
    out[..., :half] = x1 * c - x2 * s
    out[..., half:] = x2 * c + x1 * s
    return out


def attend_rows(
    q: np.ndarray, k_ctx_t: np.ndarray, v_ctx: np.ndarray, start_pos: int, out: np.ndarray
) -> None:
    """Causal grouped-query attention of a chunk's rows, one row at a time.

    q: (n, num_heads, head_dim), already scaled by 1/sqrt(head_dim); query heads
    [j*g, (j+1)*g) use KV head j. k_ctx_t: keys transposed, (num_kv_heads, head_dim, >= ctx);
    v_ctx: (num_kv_heads, >= ctx, head_dim); ctx = start_pos + n; both float32 with unit
    stride on their last axis. Row i (position start_pos + i) attends to keys
    [0, start_pos + i] exactly, so its result depends only on its own inputs (the leading
    dimension of the context arrays does not matter). Writes the (n, num_heads * head_dim)
    result into `out`.
    """
    n, num_heads, head_dim = q.shape
    num_kv_heads = k_ctx_t.shape[0]
    qg = np.ascontiguousarray(q).reshape(n, num_kv_heads, num_heads // num_kv_heads, head_dim)
    for i in range(n):
        ctx = start_pos + i + 1
        # (kvh, group, hd) @ (kvh, hd, ctx): keys pre-transposed so BLAS runs its NN kernel,
        # about 2.5x faster here than the transposed-view (NT) form.
        scores = np.matmul(qg[i], k_ctx_t[:, :, :ctx])
        np.subtract(scores, scores.max(axis=-1, keepdims=True), out=scores)
        np.exp(scores, out=scores)
        denom = np.add.reduce(scores, axis=-1, keepdims=True)
        mixed = np.matmul(scores, v_ctx[:, :ctx])  # (kvh, group, hd)
        np.divide(mixed, denom, out=mixed)
        out[i] = mixed.reshape(-1)
