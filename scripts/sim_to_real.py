"""Sim-to-real: the live emulated server and `tierkv simulate` on the same trace slice.

`python scripts/sim_to_real.py --out DIR [--arrivals trace|poisson] [--rate R]
[--tie-spacing-ms MS] [--configs tiers,hbm,off] [--num-requests N]`:

1. **Host offset.** One request at a time (closed loop, `--concurrency 1`) on another
   part of the trace (`--trace-offset 3000`, 40 requests, HBM only), live and simulated;
   the median per-request difference of TTFT is the host's time before and after the
   device (HTTP, JSON, tokenization, SSE), which the simulator does not model by default.
2. **Validation.** For each configuration, `tierkv serve --emulate llama-3-8b --pace real`
   replays the slice (`tierkv-load run`: the first N requests of the Mooncake
   conversation trace, `--length-scale 0.0625 --time-scale 2 --max-tokens 16 --seed 1`),
   then `tierkv simulate` replays it with the same flags, once as by default and once
   with `--front-end-ms` set to the offset from step 1 (measured on other requests, not
   fitted to these).
   `--arrivals trace` sends at the trace's timestamps (whole seconds: 3-16 requests
   share one, and the live server takes them in the order their sockets come up, unless
   `--tie-spacing-ms` sends them in trace order that far apart, both sides alike);
   `poisson` sends the same requests at Poisson arrivals of `--rate` (no ties).

Prints per configuration TTFT p50 / p90 live, simulated, their ratios, the hit rates and
the median per-request TTFT difference, and writes `DIR/summary.json`. Each live replay
takes about 3.5 minutes; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from load.argparser import non_negative_float
from load.bench._servers import tierkv_server

MODEL = ("--emulate", "llama-3-8b", "--hbm-gb", "20", "--max-model-len", "20000")
CONFIGS = {
    "tiers": ("--ddr-gb", "8", "--flash-gb", "16"),  # reload deadline 300 ms (default)
    "off": ("--ddr-gb", "8", "--flash-gb", "16", "--reload-timeout-ms", "0"),
    "hbm": ("--ddr-gb", "0", "--flash-gb", "0"),
}
SLICE = ("--workload", "trace", "--seed", "1", "--length-scale", "0.0625", "--max-tokens", "16")
CALIBRATION = ("--num-requests", "40", "--trace-offset", "3000", "--concurrency", "1")


def _load(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "load", *args], check=True, stdout=subprocess.DEVNULL)


def live(out: Path, server_flags: tuple[str, ...], workload: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="s2r-") as tmp:
        with tierkv_server(Path(tmp), *MODEL, *server_flags, "--pace", "real") as server:
            _load(
                "run",
                "--base-url",
                server.base_url,
                *workload,
                "--metrics-interval",
                "0",
                "--no-plots",
                "--out",
                str(out),
            )
    return json.loads((out / "result.json").read_text())


def simulated(
    out: Path, server_flags: tuple[str, ...], workload: tuple[str, ...]
) -> dict[str, Any]:
    _load("simulate", *MODEL, *server_flags, *workload, "--no-plots", "--out", str(out))
    return json.loads((out / "result.json").read_text())


def median_difference_ms(live_run: dict[str, Any], sim_run: dict[str, Any]) -> float:
    """Median over requests of live TTFT minus simulated TTFT (same request index)."""
    sim_ttft = {r["index"]: r["ttft_ms"] for r in sim_run["requests"] if r["ttft_ms"] is not None}
    diffs = [
        r["ttft_ms"] - sim_ttft[r["index"]]
        for r in live_run["requests"]
        if r["ttft_ms"] is not None and r["index"] in sim_ttft
    ]
    return statistics.median(diffs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arrivals", choices=("trace", "poisson"), default="poisson")
    p.add_argument("--rate", type=float, default=1.46, help="requests/s with poisson arrivals")
    p.add_argument(
        "--tie-spacing-ms", type=non_negative_float, default=0.0, help="with trace arrivals"
    )
    p.add_argument("--configs", default="tiers,hbm,off")
    p.add_argument("--num-requests", type=int, default=300)
    args = p.parse_args(argv)
    configs = args.configs.split(",")
    if unknown := set(configs) - set(CONFIGS):
        p.error(f"unknown configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")

    hbm = CONFIGS["hbm"]
    cal_live = live(args.out / "calibration" / "live", hbm, (*SLICE, *CALIBRATION))
    cal_sim = simulated(args.out / "calibration" / "sim", hbm, (*SLICE, *CALIBRATION))
    offset_ms = median_difference_ms(cal_live, cal_sim)
    print(f"host offset (one request at a time, 40 other requests): {offset_ms:.1f} ms")

    arrivals = (
        ("--rate", str(args.rate))
        if args.arrivals == "poisson"
        else ("--tie-spacing-ms", str(args.tie_spacing_ms))
    )
    workload = (*SLICE, "--time-scale", "2", "--num-requests", str(args.num_requests), *arrivals)
    rows = []
    for name in configs:
        flags = CONFIGS[name]
        run = live(args.out / name / "live", flags, workload)
        sim = simulated(args.out / name / "sim", flags, workload)
        front = ("--front-end-ms", f"{offset_ms:.1f}")
        sim_fe = simulated(args.out / name / "sim_front_end", flags, (*workload, *front))
        row = {
            "config": name,
            "live": run["ttft_ms"],
            "sim": sim["ttft_ms"],
            "sim_front_end": sim_fe["ttft_ms"],
            "hit_rate": {"live": run["server"]["hit_rate"], "sim": sim["server"]["hit_rate"]},
            "median_request_difference_ms": median_difference_ms(run, sim),
        }
        rows.append(row)
        t, s, f = row["live"], row["sim"], row["sim_front_end"]
        print(
            f"{name}: live {t['p50']:.0f} / {t['p90']:.0f} ms; sim {s['p50']:.0f} / {s['p90']:.0f}"
            f" (live/sim {t['p50'] / s['p50']:.2f} / {t['p90'] / s['p90']:.2f}); sim + host"
            f" {f['p50']:.0f} / {f['p90']:.0f} ({t['p50'] / f['p50']:.2f} /"
            f" {t['p90'] / f['p90']:.2f}); hit rate {100 * row['hit_rate']['live']:.2f}% /"
            f" {100 * row['hit_rate']['sim']:.2f}%; per request live - sim, median"
            f" {row['median_request_difference_ms']:.1f} ms",
            flush=True,
        )
    summary = {
        "arrivals": args.arrivals,
        "rate": args.rate,
        "tie_spacing_ms": args.tie_spacing_ms,
        "num_requests": args.num_requests,
        "configs": configs,
        "host_offset_ms": offset_ms,
        "rows": rows,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
