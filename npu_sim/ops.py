"""Exact numpy kernels: every result bit is independent of how the work is split.

The guarantee, for every function here: the bits computed for one row (one token) depend
only on that row's own inputs (its activations, its position, the KV bytes of its own
context), never on the BLAS kernel family or thread count, on how many other rows share
the call, on where the row sits in the batch, or on how a prompt was cut into chunks.

How (quantised arithmetic with integer-valued float operands, as Ascend's W8A8 does):

* **Linear layers** (`QuantizedLinear`): weights are int8 per output channel
  (`w = w_int * scale[n]`), activations int8 per row (`x = x_int * s[m]`). `x_int @ w_int`
  is a sum of integers whose every partial sum stays below 2**24, so float32 BLAS gets it
  *exactly*, whatever order, blocking or threading the kernel uses. The reduction axis is
  cut into pieces of at most `_MAX_EXACT_K` so that bound holds for 8-bit operands; the
  pieces' exact results are added in a fixed order. Scaling is elementwise IEEE
  arithmetic, correctly rounded, hence the same everywhere.
* **KV** (`quantize_kv`): K and V are stored as `q * 2**e` with `|q| <= 127` and one
  power-of-two exponent per (token, KV head). Those values are exact in float16 (the pool
  dtype), so what a reloaded block holds is exactly what was computed.
* **Attention** (`attend`): queries are integers per (row, head), with as many bits as
  keep `q_int @ K` exact in float32 (one exponent per key, integer sums < 2**24: 11 bits
  at head_dim 64). Softmax weights are integers:
  `p = EXP_TABLE[rint((max - score) * R)]` (a table of `rint(2**14 * exp(-i / R))`
  computed in exact decimal arithmetic), so the denominator is an exact integer sum and
  `p @ V` is exact in float64 (V exponents are clamped to a 16-wide window:
  2**14 * 127 * 2**16 * MAX_CONTEXT stays below 2**53). One division per output.
* **Elementwise** functions are IEEE operations on each element (add, multiply, divide,
  sqrt, rint, ldexp: correctly rounded, so vector width and alignment do not matter) or
  numpy's float32 `exp` on contiguous arrays (SiLU; one SIMD routine per CPU level, tails
  by masked loads); row reductions (RMSNorm's mean of
  squares, maxima) run over exactly one row of fixed length with numpy's pairwise sum,
  whose association is fixed by its source code.

Across machines: nothing here depends on the BLAS kernel (checked with several OpenBLAS
core types on one CPU: `python -m npu_sim.bench --fingerprint`, README Performance).
numpy's float32 exp (and float64 sin/cos) may differ in the last bit between its SIMD
levels (AVX-512 and AVX2 use different routines), so
`Model.numerics_id` keeps numpy's version and SIMD level, but not the BLAS kernel family.

All functions are pure (except `RopeTable`'s lazy growth) and thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Final

import numpy as np

QMAX: Final = 127  # 8-bit symmetric range
_F32_EXACT: Final = 1 << 24  # integers up to here are exact in float32
# Longest reduction of two 8-bit operands whose every partial sum is exact in float32.
_MAX_EXACT_K: Final = (_F32_EXACT - 1) // (QMAX * QMAX)  # 1040

# Attention: softmax weights are integers in [0, 2**P_BITS].
P_BITS: Final = 14
EXP_RESOLUTION: Final = 1024  # table steps per unit of (max - score)
# V exponents live in [V_EXP_MIN, V_EXP_MAX]: |v| <= 127 * 2**3, resolution 2**-13.
V_EXP_MIN: Final = -13
V_EXP_MAX: Final = 3
K_EXP_MIN: Final = -24  # the smallest float16 subnormal step
K_EXP_MAX: Final = 8  # 127 * 2**8 = 32512 < float16 max
# p @ V in float64 is exact while 2**P_BITS * 127 * 2**(V window) * context < 2**53.
MAX_CONTEXT: Final = (1 << 53) // ((1 << P_BITS) * QMAX * (1 << (V_EXP_MAX - V_EXP_MIN)))


def _exp_table() -> np.ndarray:
    """`rint(2**P_BITS * exp(-i / EXP_RESOLUTION))` until it reaches 0, then one 0.

    Computed with `decimal` at 40 digits, so the table is the same on every machine (a
    libm `exp` could round a near-tie differently).
    """
    values: list[int] = []
    with localcontext() as ctx:  # leaves the thread's own decimal context alone
        ctx.prec = 40
        scale, step = Decimal(1 << P_BITS), Decimal(1) / Decimal(EXP_RESOLUTION)
        i = 0
        while True:
            v = int((scale * (-(step * i)).exp()).to_integral_value())  # half-even, like rint
            values.append(v)
            if v == 0:
                break
            i += 1
    table = np.array(values, dtype=np.float64)
    table.flags.writeable = False
    return table


EXP_TABLE: Final = _exp_table()
_EXP_LAST: Final = len(EXP_TABLE) - 1  # index of the final 0


# -- linear layers --------------------------------------------------------------------


def quantize_rows(x: np.ndarray, qmax: int = QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row quantisation of float32 `x` (..., K).

    Returns `(x_int, scale)`: `x_int` float32 integer-valued in [-qmax, qmax] and `scale`
    (..., 1) float32 with `x ~= x_int * scale` (scale 0 for an all-zero row).
    """
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    scale = amax / np.float32(qmax)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    x_int = np.divide(x, safe)
    np.rint(x_int, out=x_int)
    np.clip(x_int, -qmax, qmax, out=x_int)
    return x_int, scale


@dataclass(frozen=True, slots=True)
class QuantizedLinear:
    """An int8 weight matrix `(K, N)` with one float32 scale per output column.

    `pieces` hold the integers as float32 (so BLAS multiplies them), cut along K into
    pieces of at most 1040 rows.
    """

    pieces: tuple[np.ndarray, ...]
    scale: np.ndarray  # (N,)

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.pieces), self.scale.shape[0]

    @classmethod
    def from_float(cls, w: np.ndarray) -> QuantizedLinear:
        """Quantise a float weight `(K, N)` (`x @ w` is the layer) per output column."""
        if w.ndim != 2 or 0 in w.shape:
            raise ValueError(f"weight must be a non-empty (K, N) matrix, got {w.shape}")
        w32 = np.asarray(w, dtype=np.float32)
        w_int_t, scale = quantize_rows(np.ascontiguousarray(w32.T))
        w_int = np.ascontiguousarray(w_int_t.T)
        k = w_int.shape[0]
        num_pieces = -(-k // _MAX_EXACT_K)
        bounds = [round(i * k / num_pieces) for i in range(num_pieces + 1)]
        pieces = tuple(
            np.ascontiguousarray(w_int[lo:hi]) for lo, hi in zip(bounds, bounds[1:], strict=False)
        )
        return cls(pieces, np.ascontiguousarray(scale[:, 0]))

    def dequantized(self) -> np.ndarray:
        """The float32 weight this layer computes with (for tests and references)."""
        return np.concatenate(self.pieces) * self.scale


def linear(x: np.ndarray, layer: QuantizedLinear) -> np.ndarray:
    """`x @ W` for float32 `x` (M, K): exact integer products, then per-element scaling."""
    x_int, x_scale = quantize_rows(np.asarray(x, dtype=np.float32))
    acc: np.ndarray | None = None
    start = 0
    for piece in layer.pieces:
        part = x_int[:, start : start + piece.shape[0]] @ piece  # exact: integers < 2**24
        if acc is None:
            acc = part
        else:
            np.add(acc, part, out=acc)  # fixed order of exact partial sums
        start += piece.shape[0]
    assert acc is not None
    # In place (same operations, same bits): no fresh multi-megabyte temporaries.
    np.multiply(acc, x_scale, out=acc)
    np.multiply(acc, layer.scale, out=acc)
    return acc


# -- elementwise ----------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Row-wise RMSNorm of (M, H) float32 `x`: one fixed-length reduction per row."""
    mean_sq = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(mean_sq + np.float32(eps))) * weight


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU `silu(gate) * up` in float32.

    numpy's float32 `exp` is one SIMD routine per CPU level for contiguous input, with
    partial vectors handled by masked loads, so each element's bits depend only on its
    value (tests check this against element-by-element calls).
    """
    g = np.ascontiguousarray(gate)
    out = np.negative(g)
    with np.errstate(over="ignore"):  # exp(-g) -> inf for g << 0 gives silu -> -0, fine
        np.exp(out, out=out)
    # (g / (1 + exp(-g))) * up, in place: the same operations in the same order.
    np.add(out, np.float32(1.0), out=out)
    np.divide(g, out, out=out)
    np.multiply(out, up, out=out)
    return out


class RopeTable:
    """cos/sin of RoPE angles per absolute position (float32, `head_dim // 2` columns).

    Angles are computed in float64 in blocks of fixed shape, so the value for a position
    never depends on which other positions were requested or when. Grows lazily; not
    thread-safe (the model runs on one thread).
    """

    _BLOCK: Final = 1024

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
            pos = np.arange(start, start + self._BLOCK, dtype=np.float64)
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


# -- KV and attention -----------------------------------------------------------------


def quantize_kv(x: np.ndarray, exp_min: int, exp_max: int) -> np.ndarray:
    """Round float32 `x` (..., head_dim) to `q * 2**e`: |q| <= 127, one e per vector.

    `e` is the smallest power of two with max|x| / 2**e below 128, clamped to
    [exp_min, exp_max] (values then saturate or lose low bits). The result is exact in
    float16 for exponents within [-24, 8].
    """
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    _, e = np.frexp(amax / np.float32(QMAX))
    np.clip(e, exp_min, exp_max, out=e)
    q = np.rint(np.ldexp(x, -e))
    np.clip(q, -QMAX, QMAX, out=q)
    return np.ldexp(q, e).astype(np.float32)


def quantize_k(x: np.ndarray) -> np.ndarray:
    return quantize_kv(x, K_EXP_MIN, K_EXP_MAX)


def quantize_v(x: np.ndarray) -> np.ndarray:
    return quantize_kv(x, V_EXP_MIN, V_EXP_MAX)


def attend(
    q: np.ndarray,
    k_ctx_t: np.ndarray,
    v_ctx: np.ndarray,
    query_pos: np.ndarray,
    head_dim_scale: float,
) -> np.ndarray:
    """Causal grouped-query attention, exact (see the module docstring).

    q: (B, n, num_heads, head_dim) float32, RoPE applied, not yet scaled.
    k_ctx_t: (B, num_kv_heads, head_dim, T) float32 or float64 holding `quantize_k`
        values (any strides BLAS accepts, e.g. a transposed view of token-major keys).
        Both dtypes give the same bits: every score is exact in either.
    v_ctx: (B, num_kv_heads, T, head_dim) float64 holding `quantize_v` values.
    query_pos: (B, n) absolute position of each query row; row (b, i) attends to keys
        [0, query_pos[b, i]] of its own sequence b. Rows of padding may repeat a
        position; keys past a row's position are ignored, whatever they hold.
    Returns (B, n, num_heads * head_dim) float32.
    """
    b, n, num_heads, hd = q.shape
    kvh, t = k_ctx_t.shape[1], k_ctx_t.shape[3]
    if t > MAX_CONTEXT:
        raise ValueError(f"context {t} exceeds the exact-attention limit {MAX_CONTEXT}")
    g = num_heads // kvh
    # Queries get as many bits as keep q_int @ K exact: 1023 levels for head_dim <= 128.
    q_int, q_scale = quantize_rows(q, min(2047, (_F32_EXACT - 1) // (QMAX * hd)))
    # (B, kvh, n*g, hd): query head h uses KV head h // g.
    qg = q_int.reshape(b, n, kvh, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, kvh, n * g, hd)
    scores = np.matmul(qg.astype(k_ctx_t.dtype), k_ctx_t).astype(np.float32, copy=False)
    # Keys every row may see: [0, lo). Past them, a band where some rows are masked.
    lo = int(query_pos.min()) + 1
    blocked: np.ndarray | None = None
    if lo < t:
        beyond = np.arange(lo, t)[None, None, :] > query_pos[:, :, None]  # (B, n, T - lo)
        blocked = np.repeat(beyond, g, axis=1)[:, None]  # (B, 1, n*g, T - lo)
        np.copyto(scores[..., lo:], -np.inf, where=blocked)
    top = scores.max(axis=-1, keepdims=True)
    # Table index floor((top - score) * f + 1/2), as (top*f + 1/2) - score*f: two passes.
    row_scale = q_scale.reshape(b, n, kvh, g, 1).transpose(0, 2, 1, 3, 4).reshape(b, kvh, n * g, 1)
    factor = row_scale * np.float32(head_dim_scale * EXP_RESOLUTION)
    offset = top * factor + np.float32(0.5)
    np.multiply(scores, factor, out=scores)
    np.subtract(offset, scores, out=scores)  # >= 0 where visible; inf or nan where masked
    with np.errstate(invalid="ignore"):
        steps = scores.astype(np.intp)
    if blocked is not None:
        np.copyto(steps[..., lo:], _EXP_LAST, where=blocked)
    p = np.take(EXP_TABLE, steps, mode="clip")  # integers in [0, 2**P_BITS]; past the end 0
    den = p.sum(axis=-1, keepdims=True)  # exact integer sum
    num = np.matmul(p, v_ctx)  # exact in float64
    out = (num / den).astype(np.float32)  # (B, kvh, n*g, hd)
    return out.reshape(b, kvh, n, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, n, num_heads * hd)


# fp16 -> float32 by moving bits: the half's sign lands on bit 31 and its 15 other bits
# on bits 27..13, which as a float32 is the half's value times 2**-112 (normal halves
# rebias, subnormal halves become float32 subnormals); one multiplication by 2**112 is
# exact. Four integer passes, ~2.5x faster than numpy's cast or a table look-up here.
_HALF_BITS_MASK: Final = np.int32(-0x70002000)  # 0x8FFFE000: sign and bits 27..13
_HALF_REBIAS: Final = np.float32(2.0**112)
_HALF_SPECIAL: Final = np.float32(2.0**16)
# Probe for flush-to-zero of subnormal inputs (DAZ): a smallest half subnormal, moved.
_DAZ_PROBE: Final = np.array([1 << 13], dtype=np.int32).view(np.float32)
# fp16 -> float32 by table look-up: the fallback when subnormal inputs would be flushed.
_F16_TO_F32: Final = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_F16_TO_F32.flags.writeable = False
# Below this many halves the table look-up is faster than moving bits (whose probe and
# inf/NaN check cost ~20 us a call): 9 vs 24 us for 2,048 halves.
_SMALL_WIDEN: Final = 8192


def _subnormals_survive() -> bool:
    """Whether this thread multiplies float32 subnormals exactly (no DAZ mode set)."""
    return bool(_DAZ_PROBE[0] * _HALF_REBIAS == np.float32(2.0**-24))


def _half_to_f32(halves: np.ndarray) -> np.ndarray | None:
    """float32 copy of C-contiguous float16 `halves` by moving bits, bit-identical to
    `astype`; None where that does not hold (half inf or NaN present, or DAZ mode)."""
    if not _subnormals_survive():
        return None
    bits = halves.view(np.int16).astype(np.int32)  # sign-extended
    np.left_shift(bits, 13, out=bits)
    np.bitwise_and(bits, _HALF_BITS_MASK, out=bits)
    out = bits.view(np.float32)
    np.multiply(out, _HALF_REBIAS, out=out)
    # Half inf and NaN came out as finite values >= 2**16 (the largest finite half is
    # 65504): rare (never in KV this model writes), so they take the slow path.
    if out.size and (out.max() >= _HALF_SPECIAL or out.min() <= -_HALF_SPECIAL):
        return None
    return out


def widen(x: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """A new C-contiguous copy of float `x` as `dtype`: exact, the same bits as `astype`
    (float16 to float32 moves bits; to float64 numpy's cast is as fast)."""
    if x.dtype == np.float16 and dtype is np.float32:
        halves = np.ascontiguousarray(x)
        if halves.size <= _SMALL_WIDEN:
            return np.take(_F16_TO_F32, halves.view(np.uint16))
        wide = _half_to_f32(halves)
        return np.take(_F16_TO_F32, halves.view(np.uint16)) if wide is None else wide
    return np.array(x, dtype=dtype, order="C")


__all__ = [
    "EXP_TABLE",
    "MAX_CONTEXT",
    "QMAX",
    "QuantizedLinear",
    "RopeTable",
    "apply_rope",
    "attend",
    "linear",
    "quantize_k",
    "quantize_kv",
    "quantize_rows",
    "quantize_v",
    "rms_norm",
    "silu_mul",
    "widen",
]
