"""Block format: round trips, zero-copy decode, and every corruption is caught."""

from __future__ import annotations

import numpy as np
import pytest

from cache.block_format import (
    DTYPE_CODES,
    CorruptBlockError,
    decode_block,
    encode_block,
    encode_blocks,
    encoded_size,
    header_size,
)

DTYPES = ["float16", "float32", "uint16", "uint8", "int8", "float64", "int32", "int64"]
SHAPES = [(), (1,), (7,), (3, 5), (2, 2, 4, 1, 3, 8)]  # the last is a pool block's rank


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(shape) * 100).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(shape: tuple[int, ...], dtype: str) -> None:
    block = sample(shape, dtype)
    buf = encode_block(block)
    assert isinstance(buf, bytes)
    assert len(buf) == encoded_size(shape, np.dtype(dtype))
    out = decode_block(buf, shape, np.dtype(dtype))
    assert out.dtype == np.dtype(dtype)
    assert out.shape == shape
    np.testing.assert_array_equal(out, block)


def test_non_contiguous_and_big_endian_inputs_round_trip() -> None:
    block = sample((4, 6), "float32")
    np.testing.assert_array_equal(decode_block(encode_block(block.T), (6, 4), np.float32), block.T)
    big = block.astype(">f4")
    np.testing.assert_array_equal(decode_block(encode_block(big), (4, 6), np.float32), block)


def test_bfloat16_bits_travel_as_uint16() -> None:
    f32 = np.array([1.0, -2.5, 3.14159], dtype=np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    out = decode_block(encode_block(bf16_bits), (3,), np.uint16)
    np.testing.assert_array_equal(out, bf16_bits)
    assert DTYPE_CODES["bfloat16"] == DTYPE_CODES["uint16"]


@pytest.mark.parametrize("dtype", ["complex64", "bool", "float128"])
def test_unsupported_dtype_is_value_error(dtype: str) -> None:
    if not hasattr(np, dtype):
        pytest.skip(f"numpy has no {dtype} here")
    with pytest.raises(ValueError, match="unsupported"):
        encode_block(np.zeros(3, dtype=dtype))


def test_decode_is_a_read_only_view_without_copy() -> None:
    block = sample((2, 3, 4), "float16")
    backing = bytearray(encode_block(block))
    out = decode_block(memoryview(backing), (2, 3, 4), np.float16)
    assert np.shares_memory(out, np.frombuffer(backing, dtype=np.uint8))
    assert not out.flags.writeable
    assert out.flags.aligned
    with pytest.raises(ValueError):
        out[0, 0, 0] = 1
    backing[-1] ^= 0xFF  # the view sees the buffer's bytes, not a snapshot
    assert out.reshape(-1)[-1] != block.reshape(-1)[-1]


def test_decode_accepts_bytes_and_memoryview() -> None:
    block = sample((5,), "float32")
    buf = encode_block(block)
    for source in (buf, memoryview(buf), memoryview(bytearray(buf))):
        np.testing.assert_array_equal(decode_block(source, (5,), np.float32), block)


@pytest.mark.parametrize("ndim", range(8))
def test_payload_is_8_byte_aligned(ndim: int) -> None:
    assert header_size(ndim) % 8 == 0
    assert header_size(ndim) >= 24 + 4 * ndim


def test_every_single_byte_flip_is_detected() -> None:
    shape = (2, 3, 4)
    buf = encode_block(sample(shape, "float16"))
    for i in range(len(buf)):
        for flip in (0x01, 0x80):
            corrupt = bytearray(buf)
            corrupt[i] ^= flip
            with pytest.raises(CorruptBlockError):
                decode_block(bytes(corrupt), shape, np.float16)


def test_truncated_or_padded_buffers_are_detected() -> None:
    shape = (3, 5)
    buf = encode_block(sample(shape, "float32"))
    for length in range(len(buf)):
        with pytest.raises(CorruptBlockError, match="truncated|payload"):
            decode_block(buf[:length], shape, np.float32)
    with pytest.raises(CorruptBlockError):
        decode_block(buf + b"\x00", shape, np.float32)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((5, 3), np.float32, "shape"),
        ((3, 5, 1), np.float32, "ndim"),
        ((3, 5), np.float16, "dtype"),
        ((3, 5), np.int32, "dtype"),
    ],
)
def test_unexpected_layout_is_detected(shape: tuple[int, ...], dtype: type, message: str) -> None:
    buf = encode_block(sample((3, 5), "float32"))
    with pytest.raises(CorruptBlockError, match=message):
        decode_block(buf, shape, dtype)


def test_corrupt_block_error_is_value_error() -> None:
    assert issubclass(CorruptBlockError, ValueError)


def test_header_fields_are_little_endian_at_documented_offsets() -> None:
    block = np.arange(6, dtype=np.float16).reshape(2, 3)
    buf = encode_block(block)
    assert buf[:4] == b"TKVB"
    assert int.from_bytes(buf[4:6], "little") == 2  # format v2: key-bound checksum
    assert buf[6] == DTYPE_CODES["float16"]
    assert buf[7] == 2
    assert int.from_bytes(buf[8:16], "little") == 12
    assert int.from_bytes(buf[24:28], "little") == 2
    assert int.from_bytes(buf[28:32], "little") == 3
    assert buf[header_size(2) :] == block.tobytes()


def test_checksum_binds_the_block_to_its_key():
    block = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    encoded = encode_block(block, key=b"A" * 16)
    assert np.array_equal(decode_block(encoded, block.shape, block.dtype, key=b"A" * 16), block)
    with pytest.raises(CorruptBlockError, match="wrong key"):
        decode_block(encoded, block.shape, block.dtype, key=b"B" * 16)


def test_decode_blocks_copies_valid_blocks_and_agrees_with_decode_block() -> None:
    from cache.block_format import decode_block, decode_blocks, encode_block

    rng = np.random.default_rng(7)
    shape = (2, 3, 4)
    blocks = [rng.standard_normal(shape).astype(np.float16) for _ in range(5)]
    keys = [bytes([i]) * 16 for i in range(5)]
    bufs: list[bytes | memoryview | None] = [
        encode_block(b, key=k) for b, k in zip(blocks, keys, strict=True)
    ]
    damaged = bytearray(bufs[1])  # type: ignore[arg-type]
    damaged[-1] ^= 1
    bufs[1] = bytes(damaged)
    bufs[2] = memoryview(bufs[2])[:-1]  # truncated: the checked decoder's path
    bufs[3] = None
    out = np.zeros((8, *shape), np.float16)
    slots = [6, 0, 1, 2, 3]
    assert decode_blocks(bufs, keys, out, slots) == [True, False, False, False, True]
    assert out[6].tobytes() == blocks[0].tobytes() and out[3].tobytes() == blocks[4].tobytes()
    # the damaged block was copied then rejected by its checksum (its slot is the
    # caller's to recompute); the truncated and absent ones never touch their slots
    assert not out[1].any() and not out[2].any()
    for buf, key in zip(bufs, keys, strict=True):
        if buf is not None:
            try:
                decode_block(buf, shape, np.float16, key=key)
                expected = True
            except CorruptBlockError:
                expected = False
            assert decode_blocks([buf], [key], out, [7]) == [expected]


def test_decode_blocks_rejects_a_block_under_another_key() -> None:
    from cache.block_format import decode_blocks, encode_block

    block = np.ones((2, 2), np.float16)
    out = np.zeros((1, 2, 2), np.float16)
    assert decode_blocks([encode_block(block, key=b"a")], [b"b"], out, [0]) == [False]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[1:])  # a job's blocks are rows of one array
def test_encode_blocks_is_encode_block_per_row(shape: tuple[int, ...], dtype: str) -> None:
    blocks = sample((5, *shape), dtype)
    keys = [bytes([i]) * 16 for i in range(5)]
    expected = [encode_block(blocks[i], key=keys[i]) for i in range(5)]
    assert encode_blocks(blocks, keys) == expected
    swapped = blocks.astype(blocks.dtype.newbyteorder(">"))  # big-endian staging copy
    assert encode_blocks(swapped, keys) == expected
    assert encode_blocks(blocks[:0], []) == []
    with pytest.raises(ValueError):
        encode_blocks(blocks, keys[:4])


@pytest.mark.parametrize("as_view", [False, True])
def test_block_decoder_catches_damaged_blocks_in_the_middle_of_a_piece(as_view: bool) -> None:
    """One decoder call over a 64-block piece (a flash load's piece): every block's
    header and checksum are checked, whatever its neighbours, and the valid blocks land
    byte for byte (issue #11's per-piece decoder, one xxh3 state reset per block)."""
    from cache.block_format import BlockDecoder, encode_blocks

    rng = np.random.default_rng(11)
    shape = (4, 2, 16, 2, 32)  # tiny-llama's 16 KiB block
    blocks = rng.standard_normal((64, *shape)).astype(np.float16)
    keys = [bytes([i]) * 32 for i in range(64)]
    encoded = [bytearray(b) for b in encode_blocks(blocks, keys)]
    encoded[31][-5] ^= 0x10  # payload damaged
    encoded[40][24] ^= 1  # stored shape
    encoded[10][16] ^= 1  # stored checksum
    encoded[2][0] ^= 1  # magic
    wrong_key = list(keys)
    wrong_key[50] = b"x" * 32  # a valid block under another key
    bad = {2, 10, 31, 40, 50}
    bufs: list[bytes | memoryview | None] = [
        memoryview(bytes(b)) if as_view else bytes(b) for b in encoded
    ]
    pool = np.zeros((70, *shape), np.float16)
    slots = [69 - i for i in range(64)]
    decode = BlockDecoder(pool)
    for _ in range(2):  # a decoder is reused across calls (a transfer lane keeps one)
        pool[:] = 0
        assert decode(bufs, wrong_key, slots) == [i not in bad for i in range(64)]
        for i in range(64):
            if i not in bad:
                assert pool[slots[i]].tobytes() == blocks[i].tobytes()
        assert not pool[slots[2]].any() and not pool[slots[40]].any()  # header: no copy


def test_block_decoder_reads_a_view_of_wider_items_as_its_bytes() -> None:
    from cache.block_format import BlockDecoder

    block = sample((2, 4), "float16")
    out = np.zeros((1, 2, 4), np.float16)
    enc = encode_block(block, key=b"k")
    views = [
        memoryview(enc).cast("H"),  # not flat bytes
        memoryview(enc).cast("b"),  # bytes of another format
        memoryview(enc).cast("c"),
        memoryview(np.frombuffer(enc, np.uint8).reshape(-1, 1)),  # 2-D
    ]
    for view in views:
        out[:] = 0
        assert BlockDecoder(out)([view], [b"k"], [0]) == [True], (view.format, view.shape)
        assert out[0].tobytes() == block.tobytes()
