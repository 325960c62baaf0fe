"""Process-wide BLAS knobs for the numpy model (OpenBLAS as shipped in numpy wheels).

Why: the model issues many small matmuls (16-row tiles, per-row attention). OpenBLAS
threads them across cores, which on a small or busy machine costs more in wake-ups than
it gains: we measured a one-token tiny-llama step at ~15 ms median / ~110 ms worst with two
BLAS threads next to a running server, vs ~6.5 ms / ~11 ms with one. The thread count does
not change any result bit (each output element is reduced in the same order), so this is a
pure performance knob. `Model` scopes it around each forward (`blas_threads_limited`);
`limit_blas_threads` sets it for the whole process.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np

_SET_THREADS = (
    "scipy_openblas_set_num_threads64_",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GET_THREADS = (
    "scipy_openblas_get_num_threads64_",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)
_CORE_NAME = ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename")


@cache
def _openblas() -> ctypes.CDLL | None:
    """The OpenBLAS library numpy loaded (same handle: dlopen of a loaded path is shared)."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs_dir, "*openblas*.so*"))):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _symbol(names: tuple[str, ...]) -> Any:
    """First exported function of `names` in numpy's OpenBLAS, or None."""
    lib = _openblas()
    for name in names if lib is not None else ():
        func = getattr(lib, name, None)
        if func is not None:
            return func
    return None


def limit_blas_threads(num_threads: int) -> bool:
    """Set numpy's OpenBLAS thread count for the whole process.

    Returns False (and changes nothing) when numpy is not linked against a recognisable
    OpenBLAS. Thread-safety: call before starting the engine thread.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    func = _symbol(_SET_THREADS)
    if func is None:
        return False
    func.argtypes = [ctypes.c_int]
    func.restype = None
    func(num_threads)
    return True


@contextmanager
def blas_threads_limited(num_threads: int | None) -> Iterator[None]:
    """Run the body with numpy's OpenBLAS at `num_threads` threads, then restore.

    None, or a BLAS this module does not recognise, leaves everything alone. The setting
    is process-wide, so BLAS work on other threads during the body is affected too (it
    stays correct: the thread count never changes results). Costs ~2 us.
    """
    previous = blas_threads() if num_threads is not None else None
    if num_threads is None or previous is None or previous == num_threads:
        yield
        return
    limit_blas_threads(num_threads)
    try:
        yield
    finally:
        limit_blas_threads(previous)


def blas_threads() -> int | None:
    """numpy's current OpenBLAS thread count, or None if unknown."""
    func = _symbol(_GET_THREADS)
    if func is None:
        return None
    func.argtypes = []
    func.restype = ctypes.c_int
    return int(func())


def blas_core_name() -> str | None:
    """The OpenBLAS kernel family in use (e.g. "SkylakeX"), or None if unknown.

    Bit-exact results (KV bytes, logits) are only reproducible across machines with the
    same kernel family, so this is worth recording next to persisted KV blocks.
    """
    func = _symbol(_CORE_NAME)
    if func is None:
        return None
    func.argtypes = []
    func.restype = ctypes.c_char_p
    name = func()
    return name.decode() if name else None
