"""Process-wide BLAS knobs for the numpy model (OpenBLAS as shipped in numpy wheels).

Why: the model issues many small matmuls (16-row tiles, per-row attention). OpenBLAS
threads them across cores, which on a small or busy machine costs more in wake-ups than
it gains: we measured a one-token tiny-llama step at ~15 ms median / ~110 ms worst with two
BLAS threads next to a running server, vs ~6.5 ms / ~11 ms with one. The thread count does
not change any result bit (each output element is reduced in the same order), so this is a
pure performance knob. `Model` scopes it around each forward (`blas_threads_limited`);
`limit_blas_threads` sets it for the whole process. Backed by threadpoolctl, so it works
with whatever BLAS numpy was built against (OpenBLAS, MKL, BLIS, Accelerate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from threadpoolctl import ThreadpoolController


@cache
def _blas() -> ThreadpoolController:
    """numpy's BLAS libraries, found once (numpy loads its BLAS at import)."""
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded before the scan)

    return ThreadpoolController().select(user_api="blas")


def blas_core_name() -> str | None:
    """The BLAS kernel family in use (e.g. OpenBLAS "SkylakeX"), or None if unknown.

    Bit-exact results (KV bytes, logits) are only reproducible across machines with the
    same kernel family, so this is part of `Model.numerics_id`.
    """
    for info in _blas().info():
        return str(info.get("architecture") or info.get("internal_api"))
    return None


def blas_threads() -> int | None:
    """numpy's current BLAS thread count, or None if no BLAS was found."""
    for info in _blas().info():
        return int(info["num_threads"])
    return None


def limit_blas_threads(num_threads: int) -> bool:
    """Set numpy's BLAS thread count for the whole process (False: no BLAS found).

    Thread-safety: call before starting the engine thread.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if not _blas().lib_controllers:
        return False
    _blas().limit(limits=num_threads)  # not used as a context: the limit stays
    return True


@contextmanager
def blas_threads_limited(num_threads: int | None) -> Iterator[None]:
    """Run the body with numpy's BLAS at `num_threads` threads, then restore.

    None leaves everything alone. The setting is process-wide, so BLAS work on other
    threads during the body is affected too (it stays correct: the thread count never
    changes results). Costs ~12 us.
    """
    if num_threads is None or blas_threads() in (None, num_threads):
        yield
        return
    with _blas().limit(limits=num_threads):
        yield
