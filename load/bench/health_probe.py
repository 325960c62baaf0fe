"""/health latency while a server is stressed (issue #7): one huge request body, or a
burst of concurrent requests beyond its queue.

Talks HTTP only. The stress runs in its own process (so its client work never delays
the probe) while this process polls /health back to back; it prints /health latency
before and during the stress and what the stress got back. Run it against two servers
side by side to compare builds:

    python -m load.bench.health_probe --base-url http://127.0.0.1:8100 big-body --mb 60
    python -m load.bench.health_probe --base-url http://127.0.0.1:8100 burst --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx


def _body(mib: int, kind: str) -> bytes:
    size = mib * 1024 * 1024
    head = b'{"model": "%s", "max_tokens": 2, "prompt": '
    if kind == "text":
        return head + b'"' + b"x" * size + b'"}'
    n = size // 3  # "65," per token id
    return head + b"[" + b"65," * (n - 1) + b"65]}"


def _poll(client: httpx.Client, until: threading.Event | None, count: int) -> list[float]:
    """Latencies (s) of /health requests: `count` of them, or until `until` is set."""
    out: list[float] = []
    while (until is None and len(out) < count) or (until is not None and not until.is_set()):
        start = time.perf_counter()
        client.get("/health").raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def _upload(base_url: str, body: bytes, chunked: bool, results: mp.Queue) -> None:
    """Send the body; put {"status": status or error name, "seconds": s} on `results`."""
    content = (
        iter([body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20)]) if chunked else body
    )
    start = time.perf_counter()
    try:
        with httpx.Client(base_url=base_url, timeout=300) as c:
            r = c.post(
                "/v1/completions", content=content, headers={"content-type": "application/json"}
            )
        status: int | str = r.status_code
    except httpx.TransportError as exc:
        status = type(exc).__name__
    results.put({"upload_status": status, "upload_seconds": round(time.perf_counter() - start, 3)})


def _burst(base_url: str, clients: int, max_tokens: int, model: str, results: mp.Queue) -> None:
    """`clients` concurrent chat requests; put status counts and Retry-After values."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "hi"}],
    }

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as c:
            return await asyncio.gather(
                *(c.post("/v1/chat/completions", json=body) for _ in range(clients))
            )

    start = time.perf_counter()
    responses = asyncio.run(run())
    results.put(
        {
            "statuses": dict(Counter(r.status_code for r in responses)),
            "retry_after": sorted(
                {r.headers.get("retry-after", "-") for r in responses if r.status_code == 503}
            ),
            "burst_seconds": round(time.perf_counter() - start, 3),
        }
    )


def measure(base_url: str, stress: Callable[..., None], *args: object) -> dict[str, object]:
    """Poll /health idle, then while `stress(base_url, *args, results)` runs in a child."""
    results: mp.Queue = mp.Queue()
    done = threading.Event()
    with httpx.Client(base_url=base_url, timeout=300) as probe:
        idle = _poll(probe, None, 50)
        child = mp.get_context("fork").Process(target=stress, args=(base_url, *args, results))
        child.start()

        def watch() -> None:
            child.join()
            done.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        busy = _poll(probe, done, 0)
        watcher.join()
    out: dict[str, object] = results.get(timeout=10)
    out.update(
        health_idle_p50_ms=round(statistics.median(idle) * 1e3, 2),
        health_busy_p50_ms=round(statistics.median(busy) * 1e3, 2) if busy else None,
        health_busy_max_ms=round(max(busy) * 1e3, 2) if busy else None,
        health_busy_count=len(busy),
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="tiny-llama")
    sub = parser.add_subparsers(dest="stress", required=True)
    big = sub.add_parser("big-body", help="upload one huge /v1/completions body")
    big.add_argument("--mb", type=int, default=60, help="body size in MiB")
    big.add_argument("--kind", choices=("text", "ids"), default="text")
    big.add_argument("--chunked", action="store_true", help="no Content-Length")
    burst = sub.add_parser("burst", help="many concurrent chat requests at once")
    burst.add_argument("--clients", type=int, default=64)
    burst.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.stress == "big-body":
        body = _body(args.mb, args.kind).replace(b"%s", args.model.encode(), 1)
        out = measure(args.base_url, _upload, body, args.chunked)
        params = {"mb": args.mb, "kind": args.kind, "chunked": args.chunked}
    else:
        out = measure(args.base_url, _burst, args.clients, args.max_tokens, args.model)
        params = {"clients": args.clients, "max_tokens": args.max_tokens}
    print(json.dumps({"base_url": args.base_url, "stress": args.stress, **params, **out}))


if __name__ == "__main__":
    main()
