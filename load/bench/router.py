"""Router policies side by side: the same workload through `tierkv route` with each policy.

For each policy, in one run: start N fresh tierkv replicas (each with its own embedded
Redis and LMDB, KV events on), start `tierkv route` over them, run `tierkv-load run`
against the router, and stop everything. Reported per policy: hit rate (cached / prompt
tokens), TTFT p50 and p90, errors, and how the requests were spread.

Run: ``python -m load.bench.router [--policies cache-aware,least-loaded,round-robin]
[--replicas 2] [--out results/router] [-- extra tierkv-load run flags]``.
Replica flags go in ``--server-flags "..."``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from load.bench._servers import ManagedServer, free_port, tierkv_server

DEFAULT_SERVER_FLAGS = (
    "--pace real --cost-model llama-3-8b --hbm-gb 0.08 --ddr-gb 0 --flash-gb 0 --max-model-len 4096"
)
DEFAULT_LOAD_FLAGS = (
    "--workload multiturn --num-users 16 --num-turns 6 --system-len 64 --user-len 256 "
    "--max-tokens 32 --rate 1.5 --seed 1 --no-plots --metrics-interval 0"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load.bench.router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policies", default="cache-aware,least-loaded,round-robin")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--server-flags", default=DEFAULT_SERVER_FLAGS)
    p.add_argument("--load-flags", default=DEFAULT_LOAD_FLAGS)
    p.add_argument("--router-flags", default="", help="extra `tierkv route` flags")
    p.add_argument("--out", type=Path, default=Path("results/router"))
    return p


def run_policy(policy: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        replicas: list[ManagedServer] = []
        for i in range(args.replicas):
            flags = [
                *shlex.split(args.server_flags),
                "--kv-events-endpoint",
                "tcp://127.0.0.1:*",
                "--kv-events-replay-endpoint",
                "tcp://127.0.0.1:*",
            ]
            server = tierkv_server(work / policy / f"replica{i}", *flags)
            server.start()
            stack.callback(server.stop)
            replicas.append(server)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "server",
            "route",
            "--port",
            str(port),
            "--policy",
            policy,
            "--log-level",
            "warning",
            *shlex.split(args.router_flags),
        ]
        for server in replicas:
            argv += ["--replica", server.base_url]
        router = ManagedServer(argv, port, work / policy / "router.log")
        router.start()
        stack.callback(router.stop)
        out = args.out / policy
        cmd = [
            sys.executable,
            "-m",
            "load",
            "run",
            "--base-url",
            router.base_url,
            "--out",
            str(out),
            *shlex.split(args.load_flags),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        result = json.loads((out / "result.json").read_text())
        routed = httpx.get(f"{router.base_url}/router/stats").json()
    return {
        "policy": policy,
        "hit_rate": result["cached_fraction"],
        "ttft_p50_ms": result["ttft_ms"]["p50"],
        "ttft_p90_ms": result["ttft_ms"]["p90"],
        "num_requests": result["num_requests"],
        "num_errors": result["num_errors"],
        "routed": [r["routed"] for r in routed["replicas"]],
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tkv-route-") as tmp:
        for policy in args.policies.split(","):
            rows.append(run_policy(policy.strip(), args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))
    base = next((r for r in rows if r["policy"] == "round-robin"), rows[-1])
    print(
        f"\n| policy | hit rate | vs {base['policy']} | TTFT p50 ms | TTFT p90 ms "
        "| errors | requests per replica |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["hit_rate"] / base["hit_rate"] if base["hit_rate"] else float("nan")
        print(
            f"| {r['policy']} | {r['hit_rate']:.1%} | {ratio:.2f}x | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p90_ms']:.0f} | {r['num_errors']} | {r['routed']} |"
        )


if __name__ == "__main__":
    main()
