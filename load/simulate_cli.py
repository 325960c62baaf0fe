"""The ``simulate`` command (``tierkv-load simulate``, also ``tierkv simulate``): a
workload through the server's scheduler and cache manager on a virtual clock, written
as ``run``'s result.json, plus ``--sweep`` over DDR and flash sizes."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from load import report, workloads
from load.html_report import write_html_report
from load.plots import write_plots
from load.plots_sweep import write_sweep_plot
from load.simulate import SimOutcome, simulate_workload
from load.stats import RequestRecord, Slo
from load.workload_args import (
    WORKLOAD_HELP,
    add_workload_options,
    arrival_of,
    build_specs,
    other_workloads_options,
)
from server.cli import FLAG_CHOICES
from server.config import Settings
from server.simulate.engine import SimulationStuckError
from server.simulate.front_end import FrontEndModel
from server.stack import ConfigError

# The `tierkv serve` settings a simulated replica takes (same names, meaning, defaults).
SIM_SETTINGS = (
    "emulate",
    "device",
    "hbm_gb",
    "ddr_gb",
    "flash_gb",
    "ddr_media",
    "flash_media",
    "kv_bytes_fraction",
    "block_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "eviction_policy",
    "admission_policy",
    "load_policy",
    "reload_timeout_ms",
    "prefetch_fraction",
)
SWEEP_FILE = "sweep.json"

DESCRIPTION = """Replay a workload through tierkv's own scheduler, cache manager and policies
on a virtual clock: steps last their modelled device time, tier transfers their modelled
link time, nothing sleeps and no KV bytes are stored. Capacities count the emulated
model's bytes (64 GB of HBM and 1 TB of DDR for llama-3-8b are fine). The workload
options are `run`'s, so the same slice can be replayed live and simulated. Writes
result.json in `run`'s schema (times are virtual), the plots and report.html. With
--sweep, --ddr-gb and --flash-gb take several sizes and every combination is simulated."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay a workload on the server's scheduler and cache, virtual clock",
        description=DESCRIPTION,
    )
    p.add_argument(
        "--workload",
        required=True,
        choices=workloads.WORKLOADS,
        help="; ".join(f"{k}: {v}" for k, v in WORKLOAD_HELP.items()),
    )
    p.add_argument("--out", required=True, type=Path, help="directory for result.json, plots")
    for name in SIM_SETTINGS:
        field = Settings.model_fields[name]
        choices = FLAG_CHOICES.get(name)
        listed = f" Choices: {', '.join(choices)}." if choices else ""
        default = getattr(field.default, "value", field.default)
        sweepable = name in ("ddr_gb", "flash_gb")
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=float if sweepable else str,
            nargs="+" if sweepable else None,
            required=name == "emulate",
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description}{listed} (default: {default}"
            + ("; several with --sweep)" if sweepable else ")"),
        )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="simulate every combination of the --ddr-gb and --flash-gb sizes; writes "
        f"one run per combination, {SWEEP_FILE} and sweep.png",
    )
    p.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="virtual seconds between samples of the engine's gauges (default %(default)s)",
    )
    p.add_argument(
        "--front-end-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="host-overhead model (off by default): each request spends MS milliseconds, "
        "plus --front-end-us-per-token per prompt token, in one FIFO front end (HTTP and "
        "tokenization on the server's event loop) before it reaches the engine",
    )
    p.add_argument(
        "--front-end-us-per-token",
        type=float,
        default=0.0,
        metavar="US",
        help="host-overhead model: front-end microseconds per prompt token (default 0)",
    )
    p.add_argument(
        "--tie-order-seed",
        type=int,
        default=None,
        metavar="SEED",
        help="take requests that arrive at the same instant in a random order drawn with "
        "SEED, as a live server's event loop does (default: in the workload's order)",
    )
    add_workload_options(p, client=False)


def settings_of(args: argparse.Namespace, ddr_gb: float, flash_gb: float) -> Settings:
    """The server settings of one simulated replica (ValidationError on bad values)."""
    values: dict[str, Any] = {
        name: getattr(args, name)
        for name in SIM_SETTINGS
        if hasattr(args, name) and name not in ("ddr_gb", "flash_gb")
    }
    return Settings(ddr_gb=ddr_gb, flash_gb=flash_gb, **values)


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    default = Settings.model_fields
    ddr_sizes = list(getattr(args, "ddr_gb", [default["ddr_gb"].default]))
    flash_sizes = list(getattr(args, "flash_gb", [default["flash_gb"].default]))
    grid = list(itertools.product(ddr_sizes, flash_sizes))
    if len(grid) > 1 and not args.sweep:
        console.print("[red]error:[/] several --ddr-gb / --flash-gb sizes need --sweep")
        return 2
    try:
        specs = build_specs(args)
        runs = [settings_of(args, d, f) for d, f in grid]
    except (ValueError, OSError) as exc:  # ValidationError is a ValueError
        console.print(f"[red]error:[/] {_one_line(exc)}")
        return 2
    arrival = arrival_of(args)
    slo = Slo(ttft_ms=args.slo_ttft, tpot_ms=args.slo_tpot)
    rows = []
    for (ddr_gb, flash_gb), settings in zip(grid, runs, strict=True):
        out = args.out if not args.sweep else args.out / f"ddr{ddr_gb:g}_flash{flash_gb:g}"
        label = f"DDR {ddr_gb:g} GiB, flash {flash_gb:g} GiB"
        try:
            sim = _simulate(settings, specs, arrival, slo, args, console, label)
        except (ConfigError, SimulationStuckError) as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        result = _write_run(sim, settings, arrival, slo, args, out, console)
        rows.append(_sweep_row(ddr_gb, flash_gb, result, sim.wall_s))
    if args.sweep:
        _write_sweep(rows, args, console)
    return 0


def _simulate(
    settings: Settings,
    specs: list[workloads.RequestSpec],
    arrival: Any,
    slo: Slo,
    args: argparse.Namespace,
    console: Console,
    label: str,
) -> SimOutcome:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("virtual {task.fields[vt]:,.1f} s"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"simulate {args.workload}, {label}", total=len(specs), vt=0.0)

        total = len(specs)
        step = max(1, total // 20)
        done = 0

        def on_done(record: RequestRecord, now: float) -> None:
            nonlocal done
            done += 1
            progress.update(task, advance=1, vt=now)
            if not console.is_terminal and (done % step == 0 or done == total):
                # Logs get a line every 5% (the bar only redraws on a terminal).
                console.print(f"{done}/{total} requests, virtual {now:,.1f} s")

        front_end = FrontEndModel(
            seconds_per_request=args.front_end_ms / 1000,
            seconds_per_token=args.front_end_us_per_token / 1e6,
            tie_order_seed=args.tie_order_seed,
        )
        return simulate_workload(
            settings, specs, arrival, slo, on_done, args.sample_interval or None, front_end
        )


def _write_run(
    sim: SimOutcome,
    settings: Settings,
    arrival: Any,
    slo: Slo,
    args: argparse.Namespace,
    out: Path,
    console: Console,
) -> dict[str, Any]:
    meta = {
        "workload": args.workload,
        "base_url": "simulated",
        "seed": args.seed,
        "arrival": arrival.describe(),
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("command", *SIM_SETTINGS)
            and k not in other_workloads_options(args.workload)
        },
        "simulated": {
            "settings": {n: _plain(getattr(settings, n)) for n in SIM_SETTINGS},
            "blocks": sim.totals.num_blocks,
            "engine_steps": sim.totals.steps,
            "wall_s": round(sim.wall_s, 3),
        },
    }
    result = report.build_result(sim.outcome, meta)
    path = report.write_result(result, out)
    report.print_summary(result, console)
    console.print(
        f"simulated {result['duration_s']:,.1f} virtual s in {sim.wall_s:,.1f} s of wall time"
    )
    if args.no_plots:
        console.print(f"wrote {path}")
    else:
        labelled = [(f"{args.workload} (simulated)", result)]
        html = write_html_report(labelled, out, write_plots(labelled, out))
        console.print(f"wrote {path}, plots and {html}")
    return result


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _sweep_row(ddr_gb: float, flash_gb: float, result: dict[str, Any], wall_s: float) -> dict:
    return {
        "ddr_gb": ddr_gb,
        "flash_gb": flash_gb,
        "ttft_p50_ms": result["ttft_ms"]["p50"],
        "ttft_p90_ms": result["ttft_ms"]["p90"],
        "goodput_requests_per_s": result["goodput_requests_per_s"],
        "good_fraction": result["good_fraction"],
        "hit_rate": result["server"]["hit_rate"],
        "duration_s": result["duration_s"],
        "wall_s": round(wall_s, 3),
    }


def _write_sweep(rows: list[dict[str, Any]], args: argparse.Namespace, console: Console) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SWEEP_FILE).write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    table = Table(title=f"capacity sweep, {args.workload} ({args.emulate}, simulated)")
    for col in ("DDR GiB", "flash GiB", "hit rate", "TTFT p50 ms", "TTFT p90 ms", "goodput/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['ddr_gb']:g}",
            f"{r['flash_gb']:g}",
            "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}",
            f"{r['ttft_p50_ms'] or 0:,.0f}",
            f"{r['ttft_p90_ms'] or 0:,.0f}",
            f"{r['goodput_requests_per_s']:.2f}",
        )
    console.print(table)
    plot = write_sweep_plot(rows, args.out / "sweep.png", _slo_text(args))
    console.print(f"wrote {args.out / SWEEP_FILE} and {plot}")


def _slo_text(args: argparse.Namespace) -> str:
    parts = [f"TTFT {args.slo_ttft:g} ms" if args.slo_ttft else "", ""]
    parts[1] = f"TPOT {args.slo_tpot:g} ms" if args.slo_tpot else ""
    text = ", ".join(p for p in parts if p)
    return f"SLO {text}" if text else "no SLO: goodput = throughput"


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
