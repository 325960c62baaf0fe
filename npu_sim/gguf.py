"""A numpy-only reader for GGUF files (llama.cpp's model format, versions 2 and 3).

`GGUFFile(path)` parses the header, the metadata key/values (scalars, strings and arrays,
including arrays of strings) and the tensor infos, and memory-maps the data section:
opening a 100 MB file takes a fraction of a second because no tensor is read until
`tensor(name)` dequantises it (vectorised, one tensor at a time) to fp32.

Supported tensor types: F32, F16, Q8_0 and Q4_1 (what SmolLM2's Q4_1 file holds); others
raise `GGUFError` when read, not when the file is opened.

Shapes: GGUF lists dimensions fastest-first (`ne[0]` is the row length), so a tensor with
dims `(ne0, ne1)` is returned as a C-contiguous numpy array of shape `(ne1, ne0)`. A
llama.cpp linear weight `(in, out)` therefore comes back as `(out, in)`, like PyTorch's.

Format reference: ggml's docs/gguf.md and ggml-quants.c (block layouts below).
Thread safety: a `GGUFFile` is read-only after construction; `tensor()` may be called from
any thread. Failure: a malformed or truncated file raises `GGUFError` (a `ValueError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

import numpy as np

GGUF_MAGIC: Final = b"GGUF"
DEFAULT_ALIGNMENT: Final = 32
QK: Final = 32  # elements per quantisation block of Q4_1 and Q8_0

MetadataValue = int | float | bool | str | list["MetadataValue"]


class GGUFError(ValueError):
    """The file is not a GGUF file we can read (bad magic, truncated, unsupported type)."""


class ValueType(IntEnum):
    """Metadata value types (gguf.md: `gguf_metadata_value_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class TensorType(IntEnum):
    """The ggml tensor types this reader knows (`ggml_type`); values are ggml's."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 8


# struct format of each fixed-size scalar value type (little-endian).
_SCALAR_FORMATS: Final = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}

# Bytes per block and elements per block of each tensor type.
BLOCK_BYTES: Final = {
    TensorType.F32: 4,
    TensorType.F16: 2,
    TensorType.Q4_0: 2 + QK // 2,
    TensorType.Q4_1: 2 + 2 + QK // 2,  # fp16 scale d, fp16 min m, 16 bytes of nibbles
    TensorType.Q8_0: 2 + QK,  # fp16 scale d, 32 int8
}
BLOCK_ELEMS: Final = {
    TensorType.F32: 1,
    TensorType.F16: 1,
    TensorType.Q4_0: QK,
    TensorType.Q4_1: QK,
    TensorType.Q8_0: QK,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's entry in the header. `shape` is numpy order (slowest first)."""

    name: str
    shape: tuple[int, ...]
    type: int  # a ggml type id; a `TensorType` when known
    offset: int  # from the start of the data section

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num_bytes(self) -> int:
        kind = TensorType(self.type)
        return self.num_elements // BLOCK_ELEMS[kind] * BLOCK_BYTES[kind]


class _Cursor:
    """Sequential little-endian reads over the mapped file, with bounds checks."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise GGUFError(f"truncated GGUF file: wanted {n} bytes at offset {self.pos}")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def scalar(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def u32(self) -> int:
        return int(self.scalar("<I"))

    def u64(self) -> int:
        return int(self.scalar("<Q"))

    def string(self) -> str:
        return bytes(self.take(self.u64())).decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> MetadataValue:
        if vtype == ValueType.STRING:
            return self.string()
        if vtype == ValueType.ARRAY:
            return self.array()
        try:
            return self.scalar(_SCALAR_FORMATS[ValueType(vtype)])
        except ValueError:
            raise GGUFError(f"unknown metadata value type {vtype}") from None

    def array(self) -> list[MetadataValue]:
        etype, count = self.u32(), self.u64()
        if etype == ValueType.STRING:
            return [self.string() for _ in range(count)]
        if etype == ValueType.ARRAY:
            return [self.array() for _ in range(count)]
        try:
            dtype = np.dtype(_SCALAR_FORMATS[ValueType(etype)][1]).newbyteorder("<")
        except ValueError:
            raise GGUFError(f"unknown metadata array element type {etype}") from None
        values = np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype)
        return list(values.tolist())


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped.

    Attributes: `version`, `metadata` (key -> value; arrays as lists), `tensors`
    (name -> `TensorInfo`, in file order), `alignment`, `data_offset`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise GGUFError(f"cannot map {self.path}: {exc}") from exc
        cur = _Cursor(memoryview(self._map.data))
        if bytes(cur.take(4)) != GGUF_MAGIC:
            raise GGUFError(f"{self.path} is not a GGUF file (bad magic)")
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {self.version}")
        num_tensors, num_kv = cur.u64(), cur.u64()
        self.metadata: dict[str, MetadataValue] = {}
        for _ in range(num_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.u32())
        self.tensors: dict[str, TensorInfo] = {}
        for _ in range(num_tensors):
            name = cur.string()
            dims = [cur.u64() for _ in range(cur.u32())]
            ttype, offset = cur.u32(), cur.u64()
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ttype, offset)
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0:
            raise GGUFError(f"bad general.alignment {align!r}")
        self.alignment = align
        self.data_offset = -(-cur.pos // align) * align

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name` dequantised to a new fp32 C-contiguous array (numpy shape).

        Raises `KeyError` for an unknown name, `GGUFError` for an unsupported type or a
        tensor that runs past the end of the file.
        """
        info = self.tensors[name]
        try:
            kind = TensorType(info.type)
        except ValueError:
            raise GGUFError(f"tensor {name!r}: unsupported ggml type {info.type}") from None
        if kind not in _DEQUANT or info.num_elements % BLOCK_ELEMS[kind]:
            raise GGUFError(f"tensor {name!r}: cannot read type {kind.name} of {info.shape}")
        start = self.data_offset + info.offset
        if start + info.num_bytes > len(self._map):
            raise GGUFError(f"tensor {name!r} runs past the end of {self.path}")
        raw = self._map[start : start + info.num_bytes]
        return _DEQUANT[kind](raw).reshape(info.shape)


def _dequant_f32(raw: np.ndarray) -> np.ndarray:
    return raw.view("<f4").astype(np.float32)


def _dequant_f16(raw: np.ndarray) -> np.ndarray:
    return raw.view("<f2").astype(np.float32)


def _dequant_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0 block: fp16 d, then 32 int8 q; x = d * q."""
    blocks = raw.reshape(-1, BLOCK_BYTES[TensorType.Q8_0])
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def _dequant_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 block: fp16 d, fp16 m, 16 bytes; element j (j < 16) is the low nibble of
    byte j and element j + 16 its high nibble; x = d * nibble + m."""
    blocks = raw.reshape(-1, BLOCK_BYTES[TensorType.Q4_1])
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 4:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (d * nibbles + m).reshape(-1)


_DEQUANT: Final = {
    TensorType.F32: _dequant_f32,
    TensorType.F16: _dequant_f16,
    TensorType.Q8_0: _dequant_q8_0,
    TensorType.Q4_1: _dequant_q4_1,
}
