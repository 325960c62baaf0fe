"""A tiny GGUF v3 writer for tests: metadata of explicit types and raw tensor bytes.

Independent of `npu_sim.gguf` (it follows ggml's docs/gguf.md), so reader bugs are not
mirrored here. Quantised tensors are passed as ready-made block bytes (`q4_1_block`,
`q8_0_block`), so tests state the exact bytes and the values they must decode to.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Metadata value types and ggml tensor types (numbers from gguf.md / ggml.h).
UINT8, INT32, UINT32, FLOAT32, BOOL, STRING, ARRAY, UINT64 = 0, 5, 4, 6, 7, 8, 9, 10
F32, F16, Q4_0, Q4_1, Q8_0 = 0, 1, 2, 3, 8
_FMT = {UINT8: "<B", INT32: "<i", UINT32: "<I", FLOAT32: "<f", BOOL: "<?", UINT64: "<Q"}


@dataclass
class RawTensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    ggml_type: int
    data: bytes


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value: object) -> bytes:
    if vtype == STRING:
        assert isinstance(value, str)
        return _string(value)
    if vtype == ARRAY:
        etype, items = value  # type: ignore[misc]
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(_value(etype, item) for item in items)
    return struct.pack(_FMT[vtype], value)


def write_gguf(
    path: Path,
    metadata: list[tuple[str, int, object]],
    tensors: list[RawTensor],
    alignment: int = 32,
) -> Path:
    """Write a GGUF v3 file: `metadata` as (key, value type, value) (an ARRAY value is
    (element type, items)), tensors packed in order, each at an `alignment` boundary."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        head += _string(key) + struct.pack("<I", vtype) + _value(vtype, value)
    data = b""
    for t in tensors:
        data += b"\0" * (-len(data) % alignment)
        head += _string(t.name) + struct.pack("<I", len(t.dims))
        head += struct.pack(f"<{len(t.dims)}Q", *t.dims)
        head += struct.pack("<IQ", t.ggml_type, len(data))
        data += t.data
    head += b"\0" * (-len(head) % alignment)
    path.write_bytes(head + data)
    return path


def f32_tensor(name: str, array: np.ndarray) -> RawTensor:
    """An F32 tensor of numpy `array` (its shape reversed into GGUF dims)."""
    a = np.ascontiguousarray(array, dtype="<f4")
    return RawTensor(name, tuple(reversed(a.shape)), F32, a.tobytes())


def q4_1_block(d: float, m: float, nibbles: list[int]) -> bytes:
    """One Q4_1 block: fp16 d, fp16 m, then byte j = nibbles[j] | nibbles[j + 16] << 4."""
    assert len(nibbles) == 32 and all(0 <= n < 16 for n in nibbles)
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return struct.pack("<ee", d, m) + packed


def q8_0_block(d: float, quants: list[int]) -> bytes:
    """One Q8_0 block: fp16 d, then 32 int8."""
    assert len(quants) == 32
    return struct.pack("<e32b", d, *quants)
