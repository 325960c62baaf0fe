"""The batch-invariant kernels keep their per-row contract bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.ops import (
    TILE_ROWS,
    attend_rows,
    pad_rows,
    padded_rows,
    tiled_matmul,
    widen_to_f32,
)


def _bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize(("k", "n"), [(256, 384), (768, 256), (256, 262), (512, 3072)])
def test_tiled_matmul_row_is_independent_of_batch_size_and_offset(k: int, n: int) -> None:
    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
    row = rng.standard_normal(k, dtype=np.float32)
    reference = tiled_matmul(pad_rows(row[None, :]), w)[0]
    for num_rows in (1, 2, 5, 16, 17, 33, 100):
        for offset in {0, num_rows // 2, num_rows - 1}:
            x = rng.standard_normal((num_rows, k), dtype=np.float32)
            x[offset] = row
            got = tiled_matmul(pad_rows(x), w)[offset]
            assert _bits(got) == _bits(reference), (num_rows, offset)


def test_plain_matmul_is_not_batch_invariant_here() -> None:
    """Documents why the tile op exists (if BLAS ever changes, this is the canary)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 384), dtype=np.float32)
    x = rng.standard_normal((2, 256), dtype=np.float32)
    single, pair = (x[:1] @ w)[0], (x @ w)[0]
    if np.array_equal(single, pair):
        pytest.skip("this BLAS happens to be batch invariant for M=1 vs M=2")
    assert _bits(tiled_matmul(pad_rows(x[:1]), w)[0]) == _bits(tiled_matmul(pad_rows(x), w)[0])


def test_tiled_matmul_rejects_unpadded_input() -> None:
    with pytest.raises(ValueError):
        tiled_matmul(np.zeros((3, 8), dtype=np.float32), np.zeros((8, 4), dtype=np.float32))


def test_padding_helpers() -> None:
    assert [padded_rows(n) for n in (0, 1, 16, 17)] == [0, TILE_ROWS, TILE_ROWS, 2 * TILE_ROWS]
    x = np.ones((3, 4), dtype=np.float32)
    padded = pad_rows(x)
    assert padded.shape == (TILE_ROWS, 4) and padded[3:].sum() == 0 and padded[:3].sum() == 12


def test_widen_to_f32_matches_astype_for_every_half() -> None:
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    expected = halves.astype(np.float32)
    assert _bits(widen_to_f32(halves)) == _bits(expected)
    strided = halves.reshape(256, 256).T
    assert _bits(widen_to_f32(strided)) == _bits(strided.astype(np.float32, order="C"))


def test_attend_rows_row_depends_only_on_its_own_context() -> None:
    rng = np.random.default_rng(1)
    kvh, group, hd, ctx = 2, 4, 32, 70
    q = rng.standard_normal((ctx, kvh * group, hd), dtype=np.float32)
    k_t = rng.standard_normal((kvh, hd, ctx), dtype=np.float32)
    v = rng.standard_normal((kvh, ctx, hd), dtype=np.float32)
    whole = np.zeros((ctx, kvh * group * hd), dtype=np.float32)
    attend_rows(q, k_t, v, 0, whole)
    # The same rows as a later chunk, with wider (garbage-padded) context arrays.
    wide_k = np.concatenate([k_t, np.full((kvh, hd, 30), 1e9, dtype=np.float32)], axis=2)
    wide_v = np.concatenate([v, np.full((kvh, 30, hd), 1e9, dtype=np.float32)], axis=1)
    part = np.zeros((23, kvh * group * hd), dtype=np.float32)
    attend_rows(q[40:63], wide_k, wide_v, 40, part)
    assert _bits(part) == _bits(whole[40:63])
    # First row attends to key 0 only: its output is exactly V[0] per kv head.
    first = whole[0].reshape(kvh, group, hd)
    assert np.array_equal(first, np.broadcast_to(v[:, :1, :], (kvh, group, hd)))
