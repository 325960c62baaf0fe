"""Micro-benchmark of the numpy model: `python -m npu_sim.bench [--model M] [--json]`.

Reports, in CPU seconds of one BLAS thread (the model's default):
* numpy's one-thread sgemm FLOP/s on 2048x2048 (the ceiling the model is compared to);
* a cold prefill of each `--prefill-lens` length, in chunks of `--chunk` tokens (as the
  server's token budget cuts it), with the model's FLOPs (linear layers 2 per weight and
  token, lm_head once, attention 4 * heads * head_dim per query-key pair and layer) and
  the fraction of the sgemm rate that makes;
* decode tokens/s at each `--decode-batches` size over `--context` tokens of context.

It only imports `npu_sim.model` and `npu_sim.model_config` (and `npu_sim.kv_pool` where
it exists: pools are counted `KVBlockPool`s, as the server's are; a checkout without it
gets bare arrays), so the same file can time an older checkout:
`PYTHONPATH=/path/to/old python npu_sim/bench.py` (run alternately with the new code to
compare side by side on a noisy machine).

`--baseline PATH` compares side by side: it runs this benchmark `--rounds` times on this
code and on the package root at PATH (e.g. a worktree of an older commit), alternating
which goes first, each in a fresh process, and prints each figure's range over the
rounds and the speed ratio of each round (this / baseline; above 1 is faster), and per
prefill the ratio this code would reach at 100% of the sgemm rate (a bound on any
speed-up the model's FLOPs allow on this CPU: `comparison_rows`).

`--fingerprint` instead prints a digest of the KV bytes and logits of a fixed 1,000-token
prefill and three decodes (with two BLAS threads), next to the BLAS kernel in use: run it
under several `OPENBLAS_CORETYPE` values to check that the kernel changes no bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import get_model_config

BLOCK_SIZE = 16


def _new_pool(model: Model, num_blocks: int) -> Any:
    """A zeroed fp16 pool: a counted `KVBlockPool` where this checkout has one (as the
    server's HBM pool is), else a bare array."""
    shape = model.kv_pool_shape(num_blocks, BLOCK_SIZE)
    # Asked of the model's own directory, not of the import system: with this project
    # installed in editable mode, its finder resolves a module the older checkout lacks
    # from the installed tree, and `import npu_sim.kv_pool` would then succeed.
    if not (Path(sys.modules[Model.__module__].__file__ or "").parent / "kv_pool.py").exists():
        return np.zeros(shape, dtype=np.float16)  # an older checkout
    from npu_sim.kv_pool import KVBlockPool

    return KVBlockPool(shape, np.float16)


def _pool_bytes(pool: Any) -> bytes:
    return bytes(pool.tobytes() if isinstance(pool, np.ndarray) else pool.kv.tobytes())


def _cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best of `repeats` CPU-time measurements of `fn` (CPU time: robust to a busy box)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def sgemm_flops() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    seconds = _cpu_seconds(lambda: a @ a, 5)
    return 2 * 2048**3 / seconds


def prefill_flops(model: Model, n: int) -> float:
    c = model.config
    h, hd = c.hidden_size, c.head_dim
    linear = h * (c.num_heads + 2 * c.num_kv_heads) * hd + c.num_heads * hd * h
    linear += 3 * h * c.intermediate_size
    attn_pairs = n * (n + 1) / 2
    return (
        2.0 * c.num_layers * linear * n
        + 2.0 * h * c.vocab_size
        + (4.0 * c.num_heads * hd * c.num_layers * attn_pairs)
    )


def fingerprint(model_name: str) -> str:
    """Digest of the KV bytes and logits of a fixed prefill and three decodes."""
    model = Model(get_model_config(model_name), blas_threads=2)
    pool = _new_pool(model, 80)
    ids = np.random.default_rng(0).integers(0, 256, 1000).tolist()
    table = list(range(64))
    digest = hashlib.sha256(model.forward([SeqChunk(ids, 0, table)], pool).tobytes())
    for i in range(3):
        digest.update(model.forward([SeqChunk([65 + i], 1000 + i, table)], pool).tobytes())
    digest.update(_pool_bytes(pool))
    return digest.hexdigest()[:16]


def _run_isolated(root: Path, args: list[str]) -> dict[str, object]:
    """This file's `--json` result with the npu_sim package under `root` (a new process;
    `-P` keeps the script's own directory off sys.path, so PYTHONPATH alone decides)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-P", __file__, "--json", *args],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark on {root} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _figures(result: dict[str, object]) -> dict[str, tuple[float, bool]]:
    """name -> (value, higher_is_better) for every figure of one `--json` result."""
    out: dict[str, tuple[float, bool]] = {
        "sgemm GFLOP/s": (float(result["sgemm_flops"]) / 1e9, True)  # type: ignore[arg-type]
    }
    for n, r in result["prefill"].items():  # type: ignore[attr-defined]
        out[f"prefill {n} s"] = (r["seconds"], False)
        out[f"prefill {n} of sgemm"] = (r["fraction_of_sgemm"], True)
    for b, tps in result["decode_tokens_per_s"].items():  # type: ignore[attr-defined]
        out[f"decode b{b} tok/s"] = (tps, True)
    return out


def compare(baseline: Path, rounds: int, args: list[str]) -> None:
    """Alternate this code and `baseline` for `rounds` rounds; print ranges and ratios."""
    this_root = Path(__file__).resolve().parents[1]
    ours: list[dict[str, tuple[float, bool]]] = []
    theirs: list[dict[str, tuple[float, bool]]] = []
    for r in range(rounds):
        order = [(this_root, ours), (baseline, theirs)]
        for root, sink in order if r % 2 == 0 else order[::-1]:
            sink.append(_figures(_run_isolated(root, args)))
            print(f"round {r + 1}/{rounds}: {root} done", file=sys.stderr)
    print(f"{'figure':<28} {'this code':>19} {'baseline':>19}  speed ratio per round")
    for name, a, b, ratios in comparison_rows(ours, theirs):
        per_round = " ".join(f"{x:.2f}" for x in ratios)
        ranges = f"{min(a):>9.3g}-{max(a):<9.3g} {min(b):>9.3g}-{max(b):<9.3g}"
        print(f"{name:<28} {ranges}  {per_round}")


def comparison_rows(
    ours: list[dict[str, tuple[float, bool]]], theirs: list[dict[str, tuple[float, bool]]]
) -> list[tuple[str, list[float], list[float], list[float]]]:
    """(figure, this code's values, the baseline's, speed ratio per round) for `compare`.

    The ratio is this / baseline where higher is better, else baseline / this: above 1 is
    faster. sgemm rows have no ratio. Each prefill also gets a "bound" row: the speed
    ratio this code would reach at 100% of the round's sgemm rate (the baseline's seconds
    over the prefill's FLOPs at that rate), so a goal above it is out of reach for any
    kernel whose work runs no faster than sgemm.
    """
    rows: list[tuple[str, list[float], list[float], list[float]]] = []
    for name, (_, higher) in ours[0].items():
        a = [o[name][0] for o in ours]
        b = [t[name][0] for t in theirs]
        pairs = zip(a, b, strict=True)
        ratios = [] if "sgemm" in name else [x / y if higher else y / x for x, y in pairs]
        rows.append((name, a, b, ratios))
        if name.startswith("prefill ") and name.endswith(" s"):
            n = name.split()[1]
            ideal = [o[name][0] * o[f"prefill {n} of sgemm"][0] for o in ours]
            bound = [y / x for x, y in zip(ideal, b, strict=True)]
            rows.append((f"prefill {n} at 100% sgemm", ideal, b, bound))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--prefill-lens", default="1024,8192")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--decode-batches", default="1,32")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    parser.add_argument("--fingerprint", action="store_true", help="digest of result bits")
    parser.add_argument("--baseline", type=Path, help="package root to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with --baseline")
    args = parser.parse_args(argv)
    if args.baseline is not None:
        passed = [
            f"--model={args.model}",
            f"--prefill-lens={args.prefill_lens}",
            f"--chunk={args.chunk}",
            f"--decode-batches={args.decode_batches}",
            f"--context={args.context}",
            f"--repeats={args.repeats}",
        ]
        compare(args.baseline.resolve(), args.rounds, passed)
        return
    if args.fingerprint:
        kernel = next(
            (i.get("architecture") for i in threadpool_info() if i["user_api"] == "blas"), None
        )
        print(f"blas kernel {kernel}: {args.model} {fingerprint(args.model)}")
        return

    threadpool_limits(1)
    model = Model(get_model_config(args.model))
    rng = np.random.default_rng(0)
    result: dict[str, object] = {"model": args.model, "sgemm_flops": sgemm_flops()}
    sgemm = float(result["sgemm_flops"])  # type: ignore[arg-type]
    prefill: dict[str, dict[str, float]] = {}
    for n in (int(x) for x in args.prefill_lens.split(",")):
        nb = -(-n // BLOCK_SIZE)
        pool = _new_pool(model, nb)
        table = list(range(nb))
        ids = rng.integers(0, 256, n).tolist()

        def run(ids: list[int] = ids, table: list[int] = table, pool: Any = pool) -> None:
            for s in range(0, len(ids), args.chunk):
                last = s + args.chunk >= len(ids)
                model.forward([SeqChunk(ids[s : s + args.chunk], s, table, last)], pool)

        seconds = _cpu_seconds(run, args.repeats if n <= 2048 else 1)
        flops = prefill_flops(model, n)
        prefill[str(n)] = {"seconds": seconds, "fraction_of_sgemm": flops / seconds / sgemm}
    result["prefill"] = prefill

    decode: dict[str, float] = {}
    batches = [int(x) for x in args.decode_batches.split(",")]
    nb = -(-(args.context + 64) // BLOCK_SIZE)
    pool = _new_pool(model, nb * max(batches))
    tables = [list(range(i * nb, (i + 1) * nb)) for i in range(max(batches))]
    for table in tables:
        ctx = rng.integers(0, 256, args.context).tolist()
        for s in range(0, args.context, args.chunk):
            model.forward([SeqChunk(ctx[s : s + args.chunk], s, table, False)], pool)
    steps = 8
    for bsz in batches:

        def decode_steps(bsz: int = bsz) -> None:
            for i in range(steps):
                model.forward(
                    [SeqChunk([65], args.context + i, tables[b]) for b in range(bsz)], pool
                )

        seconds = _cpu_seconds(decode_steps, args.repeats)
        decode[str(bsz)] = bsz * steps / seconds
    result["decode_tokens_per_s"] = decode

    if args.json:
        print(json.dumps(result))
        return
    print(f"model {args.model}: one-thread sgemm {sgemm / 1e9:.1f} GFLOP/s")
    for length, r in prefill.items():
        print(
            f"prefill {length:>6} tokens: {r['seconds']:.3f} s CPU, "
            f"{r['fraction_of_sgemm']:.0%} of sgemm FLOP/s"
        )
    for b, tps in decode.items():
        print(f"decode batch {b:>3} @ {args.context} ctx: {tps:.0f} tokens/s")


if __name__ == "__main__":
    main()
