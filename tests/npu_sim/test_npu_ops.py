"""The exact kernels keep their contract: a row's bits depend only on its own inputs.

Every test randomises what must not matter (batch size, row position, tiling, chunking,
BLAS threads) on the BLAS kernel at hand, and checks bit equality, plus exactness
against integer arithmetic where the docstring of npu_sim.ops promises it.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from npu_sim.ops import (
    EXP_TABLE,
    MAX_CONTEXT,
    P_BITS,
    QMAX,
    QuantizedLinear,
    attend,
    linear,
    quantize_k,
    quantize_rows,
    quantize_v,
    rms_norm,
    silu_mul,
    widen,
)


def _bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize(("k", "n"), [(256, 384), (768, 256), (576, 1536), (1536, 576)])
def test_linear_row_is_independent_of_batch_threads_and_position(k: int, n: int) -> None:
    rng = np.random.default_rng(k + n)
    layer = QuantizedLinear.from_float(rng.standard_normal((k, n), dtype=np.float32))
    row = rng.standard_normal(k, dtype=np.float32)
    reference = linear(row[None, :], layer)[0]
    for trial in range(12):
        num_rows = int(rng.integers(1, 200))
        offset = int(rng.integers(0, num_rows))
        x = rng.standard_normal((num_rows, k), dtype=np.float32) * rng.uniform(0.01, 100)
        x[offset] = row
        with threadpool_limits(1 + trial % 2):
            got = linear(x, layer)[offset]
        assert _bits(got) == _bits(reference), (num_rows, offset, trial)


def test_linear_integer_product_is_exact() -> None:
    """The float32 GEMM equals the int64 product: no rounding anywhere."""
    rng = np.random.default_rng(5)
    k, n = 1536, 300  # two pieces along K
    layer = QuantizedLinear.from_float(rng.standard_normal((k, n), dtype=np.float32))
    assert len(layer.pieces) == 2
    x_int, _ = quantize_rows(rng.standard_normal((37, k), dtype=np.float32) * 1e3)
    w_int = np.concatenate(layer.pieces)
    exact = x_int.astype(np.int64) @ w_int.astype(np.int64)
    for piece_start in (0, layer.pieces[0].shape[0]):
        piece = layer.pieces[0] if piece_start == 0 else layer.pieces[1]
        part = x_int[:, piece_start : piece_start + piece.shape[0]] @ piece
        expected = x_int[:, piece_start : piece_start + piece.shape[0]].astype(np.int64) @ (
            piece.astype(np.int64)
        )
        assert np.array_equal(part.astype(np.int64), expected)
    assert np.abs(exact).max() < 1 << 31
    assert np.abs(w_int).max() <= QMAX and np.abs(x_int).max() <= QMAX


def test_quantized_linear_is_close_to_float() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((256, 128), dtype=np.float32)
    x = rng.standard_normal((8, 256), dtype=np.float32)
    got = linear(x, QuantizedLinear.from_float(w))
    ref = x @ w
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()


def test_zero_rows_and_bad_weights() -> None:
    layer = QuantizedLinear.from_float(np.ones((4, 3), dtype=np.float32))
    assert np.array_equal(linear(np.zeros((2, 4), np.float32), layer), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        QuantizedLinear.from_float(np.ones(4, dtype=np.float32))


def test_rms_norm_and_silu_rows_do_not_depend_on_neighbours_or_alignment() -> None:
    rng = np.random.default_rng(9)
    h = 576
    weight = rng.standard_normal(h, dtype=np.float32)
    row = rng.standard_normal(h, dtype=np.float32)
    gate_row, up_row = rng.standard_normal((2, 1536), dtype=np.float32) * 8
    norm_ref = rms_norm(row[None], weight, 1e-5)[0]
    silu_ref = silu_mul(gate_row[None], up_row[None])[0]
    for _ in range(10):
        num_rows, pad = int(rng.integers(1, 40)), int(rng.integers(0, 7))
        offset = int(rng.integers(0, num_rows))
        # A row buffer starting at an odd element offset: misaligned for SIMD.
        buf = rng.standard_normal(num_rows * h + pad, dtype=np.float32)
        x = buf[pad:].reshape(num_rows, h)
        x[offset] = row
        assert _bits(rms_norm(x, weight, 1e-5)[offset]) == _bits(norm_ref)
        gbuf = rng.standard_normal(num_rows * 1536 + pad, dtype=np.float32)
        g = gbuf[pad:].reshape(num_rows, 1536)
        u = rng.standard_normal((num_rows, 1536), dtype=np.float32)
        g[offset], u[offset] = gate_row, up_row
        assert _bits(silu_mul(g, u)[offset]) == _bits(silu_ref)
    # Element by element (scalar-sized calls) agrees with the vector call.
    singles = np.array([silu_mul(gate_row[i : i + 1], up_row[i : i + 1])[0] for i in range(37)])
    assert _bits(singles) == _bits(silu_ref[:37])


def test_kv_quantisation_is_exact_in_float16_and_shares_one_exponent() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 2, 64), dtype=np.float32) * np.float32(
        rng.uniform(1e-4, 300, size=(50, 2, 1))
    )
    for quantize in (quantize_k, quantize_v):
        q = quantize(x)
        assert np.array_equal(q.astype(np.float16).astype(np.float32), q)
        mant, exps = np.frexp(q)
        for vec_exp, vec in zip(exps.reshape(-1, 64), q.reshape(-1, 64), strict=True):
            nonzero = vec != 0
            if nonzero.any():
                e = int(vec_exp[nonzero].max())
                ints = np.ldexp(vec, 7 - e)  # the integers behind one shared exponent
                assert np.array_equal(ints, np.rint(ints)) and np.abs(ints).max() <= 128


def _attention_inputs(
    rng: np.random.Generator, t: int, kvh: int = 2, nh: int = 8, hd: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = rng.standard_normal((t, nh, hd), dtype=np.float32) * 3
    k = quantize_k(rng.standard_normal((t, kvh, hd), dtype=np.float32) * 2)
    v = quantize_v(rng.standard_normal((t, kvh, hd), dtype=np.float32))
    return q, k, v


def _run(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: slice, ctx: int, pad: int = 0
) -> np.ndarray:
    """Attention of q[rows] over keys [0, ctx) (+ `pad` NaN keys), as one sequence."""
    kvh, hd = k.shape[1], k.shape[2]
    keys = np.concatenate([k[:ctx], np.full((pad, kvh, hd), np.nan, np.float32)])
    vals = np.concatenate([v[:ctx], np.zeros((pad, kvh, hd), np.float32)])
    pos = np.arange(rows.start, rows.stop)[None]
    k_t = keys.transpose(1, 2, 0)[None]
    return attend(
        q[rows][None], k_t, vals.transpose(1, 0, 2)[None].astype(np.float64), pos, hd**-0.5
    )[0]


def test_attention_row_depends_only_on_its_own_context() -> None:
    rng = np.random.default_rng(1)
    t = 300
    q, k, v = _attention_inputs(rng, t)
    whole = _run(q, k, v, slice(0, t), t)
    for _ in range(8):
        lo = int(rng.integers(0, t - 1))
        hi = int(rng.integers(lo + 1, t + 1))
        pad = int(rng.integers(0, 40))
        with threadpool_limits(int(rng.integers(1, 3))):
            part = _run(q, k, v, slice(lo, hi), hi, pad)  # a later chunk, NaN padding
        assert _bits(part) == _bits(whole[lo:hi]), (lo, hi, pad)
    # Row 0 sees key 0 only: its output is V[0] of each KV head, exactly.
    first = whole[0].reshape(2, 4, 32)
    assert np.array_equal(first, np.broadcast_to(v[0][:, None, :], (2, 4, 32)))


def test_attention_batches_sequences_of_different_lengths_exactly() -> None:
    rng = np.random.default_rng(4)
    seqs = [_attention_inputs(rng, t) for t in (5, 64, 129)]
    alone = [_run(q, k, v, slice(len(q) - 1, len(q)), len(q))[0] for q, k, v in seqs]
    t_max = 144
    k_t = np.full((3, 2, 32, t_max), np.nan, dtype=np.float32)
    v_b = np.zeros((3, 2, t_max, 32), dtype=np.float64)
    q_b = np.empty((3, 1, 8, 32), dtype=np.float32)
    pos = np.empty((3, 1), dtype=np.int64)
    for b, (q, k, v) in enumerate(seqs):
        k_t[b, :, :, : len(k)] = k.transpose(1, 2, 0)
        v_b[b, :, : len(v)] = v.transpose(1, 0, 2)
        q_b[b, 0], pos[b, 0] = q[-1], len(q) - 1
    batched = attend(q_b, k_t, v_b, pos, 32**-0.5)[:, 0]
    for b in range(3):
        assert _bits(batched[b]) == _bits(alone[b])


def test_softmax_weights_and_bounds() -> None:
    assert EXP_TABLE[0] == 1 << P_BITS and EXP_TABLE[-1] == 0
    assert np.all(np.diff(EXP_TABLE) <= 0) and np.array_equal(EXP_TABLE, np.rint(EXP_TABLE))
    assert (1 << P_BITS) * 127 * (1 << 16) * MAX_CONTEXT < 1 << 53
    rng = np.random.default_rng(0)
    q, k, v = _attention_inputs(rng, 40)
    q /= 3  # scores of order 1, as after training; sharper softmaxes amplify rounding
    out = _run(q, k, v, slice(0, 40), 40)
    # Close to float attention (quantised, so not equal).
    scores = np.einsum("thd,shd->hts", q, np.repeat(k, 4, axis=1)) / np.sqrt(32)
    scores += np.triu(np.full((40, 40), -np.inf), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    ref = np.einsum("hts,shd->thd", p / p.sum(-1, keepdims=True), np.repeat(v, 4, axis=1))
    assert np.abs(out - ref.reshape(40, -1)).max() < 0.02


def test_widen_matches_astype_for_every_half() -> None:
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    assert _bits(widen(halves)) == _bits(halves.astype(np.float32))
    strided = halves.reshape(256, 256).T
    assert _bits(widen(strided)) == _bits(strided.astype(np.float32, order="C"))
    assert _bits(widen(strided, np.float64)) == _bits(strided.astype(np.float64, order="C"))


def test_widen_moves_bits_for_finite_halves_and_keeps_a_lone_nan() -> None:
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]  # the fast path: subnormals, zeros, both signs
    assert _bits(widen(finite)) == _bits(finite.astype(np.float32))
    assert _bits(widen(finite, np.float64)) == _bits(finite.astype(np.float64))
    with_nan = finite.copy()
    with_nan[12345] = np.float16(np.nan)  # one special value: the whole array is redone
    assert _bits(widen(with_nan)) == _bits(with_nan.astype(np.float32))
    assert _bits(widen(with_nan, np.float64)) == _bits(with_nan.astype(np.float64))
