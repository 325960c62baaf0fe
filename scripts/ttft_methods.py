"""DDR-hit vs HBM-hit TTFT the two ways this project measured it, on one server, interleaved.

`python scripts/ttft_methods.py [--length 8192] [--rounds 6]`

`tierkv-load bench ttft` (method A) takes each hit right after a cold prefill of a new
prompt P: P with its last 8 characters changed. `scripts/ttft_ab.py` (method B) fills
one prompt Q once and takes every hit as `fresh_tail(Q)`. They put the median DDR ÷ HBM
ratio at different places, so here both run on one `tierkv serve --pace real`, in
alternating order each round, each with an HBM hit and a DDR hit (after
``POST /cache/offload {"tier": "hbm"}``): A its HBM hit first (right after the cold
prefill), B its DDR hit first (which brings Q back into HBM for its HBM hit; the other
method's offload may have moved Q out). Besides each TTFT it reads the server's own DDR
reload time for each DDR hit (the growth of `tierkv:tier_reload_latency_seconds`'s sum),
so what the reload costs can be told apart from the rest of the hit, and it checks from
`prefix_cache_hits` that every hit was served by its tier alone (else it stops).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import httpx

from load.bench._common import fmt_spread
from load.bench._servers import tierkv_server
from load.bench.ttft import fresh_tail, offload, one_ttft
from load.client import ClientOptions, first_model_id, make_client
from load.metrics_scrape import scrape
from load.synth import synth_text


async def _counters(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The DDR reload seconds so far and the prefix-cache hit tokens by tier."""
    snapshot = await scrape(client, url)
    out = {"reload": snapshot.value("tier_reload_latency_seconds_sum", tier="ddr") or 0.0}
    for tier in ("hbm", "ddr", "flash"):
        out[tier] = snapshot.value("prefix_cache_hits_total", tier=tier) or 0.0
    return out


async def measure(url: str, length: int, rounds: int) -> None:
    ttft: dict[str, list[float]] = {k: [] for k in ("A hbm", "A ddr", "B hbm", "B ddr")}
    reload_ms: dict[str, list[float]] = {"A": [], "B": []}
    async with make_client() as client:
        opts = ClientOptions(base_url=url, model=await first_model_id(client, url))
        filled = synth_text(f"ttft-methods:{length}", length)
        await one_ttft(client, opts, filled)  # method B's one cold fill
        for r in range(rounds):
            for method in "AB" if r % 2 == 0 else "BA":
                for hit in ("hbm", "ddr") if method == "A" else ("ddr", "hbm"):
                    if method == "A":
                        prompt = synth_text(f"ttft-methods:{length}:{r}:{hit}", length)
                        await one_ttft(client, opts, prompt)  # its cold prefill
                        hit_prompt = prompt[:-8] + "#" * 8
                    else:
                        hit_prompt = fresh_tail(filled, f"{hit[0]}{r:07d}")
                    if hit == "ddr":
                        await offload(client, url, "hbm")
                    before = await _counters(client, url)
                    ms, _ = await one_ttft(client, opts, hit_prompt)
                    after = await _counters(client, url)
                    served = {t: after[t] - before[t] for t in ("hbm", "ddr", "flash")}
                    if not served[hit] or any(served[t] for t in served if t != hit):
                        raise RuntimeError(f"method {method}'s {hit} hit was served {served}")
                    ttft[f"{method} {hit}"].append(ms)
                    if hit == "ddr":
                        reload_ms[method].append((after["reload"] - before["reload"]) * 1e3)
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in ttft.items())
                + " ms; DDR reload "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in reload_ms.items())
                + " ms",
                flush=True,
            )
    print(f"{length} tokens, {rounds} rounds: median (min-max)")
    for method in "AB":
        ratios = [d / h for d, h in zip(ttft[f"{method} ddr"], ttft[f"{method} hbm"], strict=True)]
        print(
            f"method {method}: HBM hit {fmt_spread(ttft[f'{method} hbm'])} ms, DDR hit "
            f"{fmt_spread(ttft[f'{method} ddr'])} ms, "
            f"DDR reload {fmt_spread(reload_ms[method])} ms, "
            f"DDR / HBM per round {fmt_spread(ratios)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192, help="prompt tokens")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    flags = ["--pace", "real", "--max-model-len", str(args.length + 64)]
    with (
        tempfile.TemporaryDirectory(prefix="tierkv-ttft-methods-") as tmp,
        tierkv_server(Path(tmp) / "data", *flags) as server,
    ):
        asyncio.run(measure(server.base_url, args.length, args.rounds))


if __name__ == "__main__":
    main()
