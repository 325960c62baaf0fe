"""Hit TTFT of several builds side by side: HBM, DDR and flash hits, interleaved.

`python scripts/ttft_ab.py --build old=/path/to/checkout --build new=.
[--lengths 1k,8k] [--rounds 12] [--out results/ttft_ab.json]`

`tierkv-load bench ttft` measures one server; comparing two commits with it means two
runs minutes apart, and on this shared machine the load moves between them (a "9-24 ms
regression" at 8k measured that way did not reproduce interleaved). Here every build
serves at once (`tierkv serve --pace real` from its own checkout: `tierkv_server`'s
`checkout`), and each round visits the builds in rotating order, so a burst of load hits
all of them alike. Per build and length: one cold fill of a prompt P, then per round
three requests, each P with a new tail (`fresh_tail`: its last full block is new, so it
is recomputed over the cached rest, as in `bench ttft`; tiny-llama's byte tokenizer):

* DDR hit: after ``POST /cache/offload {"tier": "hbm"}``;
* flash hit: after offloading HBM to DDR and DDR to flash;
* HBM hit: right after, with the blocks back in HBM.

Prints per build and length the median TTFT of each hit, the per-round ratios DDR ÷ HBM
and flash ÷ HBM (median, min-max), and, for every build after the first, its DDR-hit
TTFT over the first build's per round (so name the reference first). Writes every
sample to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from load.bench._common import fmt_spread, parse_sizes
from load.bench._servers import tierkv_server
from load.bench.ttft import cached_before_tail, fresh_tail, offload, one_ttft
from load.client import ClientOptions, first_model_id, make_client
from load.synth import synth_text

HITS = ("ddr", "flash", "hbm")


def parse_build(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKOUT_DIR, got {text!r}")
    return name, Path(path).resolve()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--build",
        type=parse_build,
        action="append",
        required=True,
        help="NAME=CHECKOUT_DIR, repeatable; the first is the reference",
    )
    p.add_argument("--lengths", type=parse_sizes, default=parse_sizes("1k,8k"))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--server-args", default="", help="extra `tierkv serve` flags, every build")
    p.add_argument("--out", type=Path, default=Path("results/ttft_ab.json"))
    return p


async def measure(urls: dict[str, str], lengths: list[int], rounds: int) -> dict[str, Any]:
    names = list(urls)
    samples: dict[str, dict[int, dict[str, list[float]]]] = {
        b: {n: {h: [] for h in HITS} for n in lengths} for b in names
    }
    async with make_client() as client:
        opts = {
            b: ClientOptions(base_url=u, model=await first_model_id(client, u))
            for b, u in urls.items()
        }
        for n in lengths:
            prompt = synth_text(f"ttft-ab:{n}", n)
            for b in names:
                cold, _ = await one_ttft(client, opts[b], prompt)
                print(f"{n} tokens, {b}: cold fill {cold:.0f} ms", flush=True)
            for r in range(rounds):
                for b in names[r % len(names) :] + names[: r % len(names)]:
                    got: dict[str, float] = {}
                    for hit in HITS:
                        if hit != "hbm":
                            await offload(client, urls[b], "hbm")
                        if hit == "flash":
                            await offload(client, urls[b], "ddr")
                        hit_prompt = fresh_tail(prompt, f"{hit[0]}{r:07d}")
                        ms, cached = await one_ttft(client, opts[b], hit_prompt)
                        if cached != cached_before_tail(prompt):  # its last full block is new
                            raise RuntimeError(
                                f"{b}, {n} tokens: {cached} cached on a {hit} hit, expected "
                                f"{cached_before_tail(prompt)}"
                            )
                        got[hit] = ms
                        samples[b][n][hit].append(ms)
                    print(
                        f"{n} tokens, round {r + 1}/{rounds}, {b}: "
                        + ", ".join(f"{h} {got[h]:.1f} ms" for h in HITS),
                        flush=True,
                    )
    return samples


def report(samples: dict[str, Any], lengths: list[int]) -> None:
    names = list(samples)
    for n in lengths:
        print(f"\n{n} tokens: median TTFT ms (HBM / DDR / flash hit); per-round ratios")
        for b in names:
            s = samples[b][n]
            ddr = [d / h for d, h in zip(s["ddr"], s["hbm"], strict=True)]
            flash = [f / h for f, h in zip(s["flash"], s["hbm"], strict=True)]
            medians = " / ".join(f"{statistics.median(s[h]):.1f}" for h in ("hbm", "ddr", "flash"))
            line = f"  {b}: {medians}; DDR/HBM {fmt_spread(ddr)}, flash/HBM {fmt_spread(flash)}"
            if b != names[0]:
                ref = samples[names[0]][n]["ddr"]
                own = [x / y for x, y in zip(s["ddr"], ref, strict=True)]
                line += f"; DDR hit / {names[0]}'s {fmt_spread(own)}"
            print(line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [name for name, _ in args.build]
    if len(set(names)) != len(names):
        raise SystemExit("build names must differ")
    flags = [
        "--pace",
        "real",
        "--max-model-len",
        str(max(args.lengths) + 64),
        *args.server_args.split(),
    ]
    with (
        tempfile.TemporaryDirectory(prefix="tierkv-ttft-ab-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        urls = {}
        for name, checkout in args.build:
            data = Path(tmp) / name
            data.mkdir()
            server = tierkv_server(data, *flags, checkout=checkout)
            urls[name] = stack.enter_context(server).base_url
        samples = asyncio.run(measure(urls, args.lengths, args.rounds))
    report(samples, args.lengths)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "builds": {n: str(p) for n, p in args.build},
                "lengths": args.lengths,
                "ttft_ms": samples,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
