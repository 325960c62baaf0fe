"""Micro-benchmark of the numpy model: `python -m npu_sim.bench [--model M] [--blas-threads N]`.

Reports the wall time of a long single-sequence prefill and of decode steps at batch 1 and
16 over a given context, best/median of a few runs. Wall-clock numbers only; nothing here
is used by the server.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from npu_sim.blas import blas_core_name
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import DEFAULT_MODEL, get_model_config

BLOCK_SIZE = 16


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--blas-threads", type=int, default=1, help="0 = leave BLAS alone")
    parser.add_argument("--prefill-len", type=int, default=2000)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model = Model(get_model_config(args.model), blas_threads=args.blas_threads or None)
    rng = np.random.default_rng(0)
    blocks_per_seq = -(-max(args.prefill_len, args.context + 1) // BLOCK_SIZE)
    pool = np.zeros(model.kv_pool_shape(17 * blocks_per_seq, BLOCK_SIZE), dtype=np.float16)
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(17)]
    threads = args.blas_threads or "untouched"
    print(f"model={args.model} blas={blas_core_name()} blas_threads={threads}")

    prompt = rng.integers(0, 256, args.prefill_len).tolist()
    best, median = _timed(lambda: model.forward([SeqChunk(prompt, 0, tables[16])], pool), 3)
    print(
        f"prefill {args.prefill_len} tokens: best {best * 1e3:.0f} ms, median {median * 1e3:.0f} ms"
    )

    for table in tables[:16]:
        ctx = rng.integers(0, 256, args.context).tolist()
        model.forward([SeqChunk(ctx, 0, table, needs_logits=False)], pool)
    for batch_size in (1, 16):
        batch = [SeqChunk([65], args.context, tables[i]) for i in range(batch_size)]

        def decode_step(batch: list[SeqChunk] = batch) -> None:
            model.forward(batch, pool)

        best, median = _timed(decode_step, args.repeats * 4)
        print(
            f"decode batch {batch_size:2d} @ {args.context} ctx: "
            f"best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
