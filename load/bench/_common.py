"""Option parsing and output shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path
from typing import Any


def parse_sizes(text: str) -> list[int]:
    """``"1k,2k,512"`` -> ``[1024, 2048, 512]`` (k = 1024)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            value = int(float(part[:-1]) * 1024) if part.endswith("k") else int(part)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a size: {part!r}") from exc
        if value < 1:
            raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {part!r}")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc


def add_common_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(default_out),
        help=f"JSON result file (default: {default_out})",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where server data dirs and logs go (default: a temp dir)"
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="extra flags for every `python -m server serve`, one string",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to wait for GET /health"
    )


def server_flags(args: argparse.Namespace) -> list[str]:
    return shlex.split(args.server_args)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def fmt_spread(values: list[float]) -> str:
    """``median (min-max)`` of a non-empty list, two decimals."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
