"""GGUF reader: metadata of every kind, tensor layout and exact dequantisation, on files
the test writes itself; then the facts of the real SmolLM2 file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from npu_sim.gguf import GGUFError, GGUFFile
from tests.npu_sim.gguf_writer import (
    ARRAY,
    BOOL,
    F16,
    FLOAT32,
    INT32,
    Q4_0,
    Q4_1,
    Q8_0,
    STRING,
    UINT8,
    UINT32,
    UINT64,
    RawTensor,
    f32_tensor,
    q4_1_block,
    q8_0_block,
    write_gguf,
)

METADATA = [
    ("general.architecture", STRING, "llama"),
    ("test.u8", UINT8, 7),
    ("test.u32", UINT32, 4_000_000_000),
    ("test.i32", INT32, -5),
    ("test.u64", UINT64, 2**40),
    ("test.f32", FLOAT32, 0.5),
    ("test.flag", BOOL, True),
    ("test.strings", ARRAY, (STRING, ["a", "Ġb c", "日本", ""])),
    ("test.ints", ARRAY, (INT32, [1, -2, 3])),
]


def q4_1_tensor() -> tuple[RawTensor, np.ndarray]:
    """Two Q4_1 blocks (one row of 64) and the values they stand for, computed by hand."""
    # Block 0: d = 0.25, m = -1; element j < 16 has nibble j, element 16 + j nibble 15 - j.
    nibbles0 = list(range(16)) + [15 - j for j in range(16)]
    # Block 1: d = 2, m = 0.5; every nibble 3 except element 31 (15).
    nibbles1 = [3] * 31 + [15]
    data = q4_1_block(0.25, -1.0, nibbles0) + q4_1_block(2.0, 0.5, nibbles1)
    expected0 = [0.25 * j - 1 for j in range(16)] + [0.25 * (15 - j) - 1 for j in range(16)]
    expected1 = [6.5] * 31 + [30.5]
    return RawTensor("q41", (64, 1), Q4_1, data), np.array([expected0 + expected1])


def q8_0_tensor() -> tuple[RawTensor, np.ndarray]:
    """Two rows of one Q8_0 block each."""
    quants0 = list(range(-16, 16))
    quants1 = [-128, 127] + [0] * 30
    data = q8_0_block(0.5, quants0) + q8_0_block(-0.125, quants1)
    expected = [[0.5 * q for q in quants0], [-0.125 * q for q in quants1]]
    return RawTensor("q80", (32, 2), Q8_0, data), np.array(expected)


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    f16 = RawTensor("f16", (3,), F16, struct.pack("<3e", 1.5, -2.0, 65504.0))
    tensors = [f32_tensor("f32", f32), f16, q4_1_tensor()[0], q8_0_tensor()[0]]
    return write_gguf(tmp_path / "small.gguf", METADATA, tensors)


def test_metadata_of_every_kind(small_gguf: Path) -> None:
    gguf = GGUFFile(small_gguf)
    assert gguf.version == 3
    assert gguf.metadata == {
        "general.architecture": "llama",
        "test.u8": 7,
        "test.u32": 4_000_000_000,
        "test.i32": -5,
        "test.u64": 2**40,
        "test.f32": 0.5,
        "test.flag": True,
        "test.strings": ["a", "Ġb c", "日本", ""],
        "test.ints": [1, -2, 3],
    }
    assert list(gguf.tensors) == ["f32", "f16", "q41", "q80"]
    assert gguf.tensors["q80"].shape == (2, 32)  # numpy order: GGUF dims reversed
    assert gguf.data_offset % 32 == 0


def test_dequantisation_is_exact(small_gguf: Path) -> None:
    gguf = GGUFFile(small_gguf)
    f32 = gguf.tensor("f32")
    assert f32.dtype == np.float32 and f32.flags.c_contiguous
    np.testing.assert_array_equal(f32, [[-2.5, -1.5, -0.5], [0.5, 1.5, 2.5]])
    np.testing.assert_array_equal(gguf.tensor("f16"), [1.5, -2.0, 65504.0])
    for name, (_, expected) in {"q41": q4_1_tensor(), "q80": q8_0_tensor()}.items():
        got = gguf.tensor(name)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_custom_alignment(tmp_path: Path) -> None:
    meta = [("general.alignment", UINT32, 64)]
    tensors = [f32_tensor("a", np.ones(3)), f32_tensor("b", np.full((2, 2), 7.0))]
    gguf = GGUFFile(write_gguf(tmp_path / "aligned.gguf", meta, tensors, alignment=64))
    assert gguf.alignment == 64 and gguf.data_offset % 64 == 0
    assert gguf.tensors["b"].offset == 64
    np.testing.assert_array_equal(gguf.tensor("b"), np.full((2, 2), 7.0))


def test_bad_files_raise_gguf_error(tmp_path: Path, small_gguf: Path) -> None:
    bad_magic = tmp_path / "bad.gguf"
    bad_magic.write_bytes(b"GGML" + small_gguf.read_bytes()[4:])
    with pytest.raises(GGUFError, match="bad magic"):
        GGUFFile(bad_magic)
    header_cut = tmp_path / "cut.gguf"
    header_cut.write_bytes(small_gguf.read_bytes()[:100])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(header_cut)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError):
        GGUFFile(empty)
    data_cut = tmp_path / "datacut.gguf"
    data_cut.write_bytes(small_gguf.read_bytes()[:-10])
    gguf = GGUFFile(data_cut)  # the header is intact: opening works, reading the tail fails
    with pytest.raises(GGUFError, match="past the end"):
        gguf.tensor("q80")


def test_unsupported_tensor_type_fails_on_read_not_on_open(tmp_path: Path) -> None:
    q40 = RawTensor("q40", (32,), Q4_0, bytes(18))
    gguf = GGUFFile(write_gguf(tmp_path / "q40.gguf", [], [q40, f32_tensor("ok", np.ones(2))]))
    np.testing.assert_array_equal(gguf.tensor("ok"), [1.0, 1.0])
    with pytest.raises(GGUFError, match="Q4_0"):
        gguf.tensor("q40")


def test_real_smollm_file(smollm_path: Path) -> None:
    gguf = GGUFFile(smollm_path)
    meta = gguf.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30 and meta["llama.embedding_length"] == 576
    assert len(meta["tokenizer.ggml.tokens"]) == 49152  # type: ignore[arg-type]
    assert len(meta["tokenizer.ggml.merges"]) == 48900  # type: ignore[arg-type]
    assert gguf.tensors["token_embd.weight"].type == Q8_0
    assert gguf.tensors["blk.0.attn_q.weight"].type == Q4_1
    assert gguf.tensors["blk.0.attn_norm.weight"].type == 0  # F32
    assert "output.weight" not in gguf.tensors  # tied head
