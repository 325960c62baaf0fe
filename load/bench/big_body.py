"""/health latency while one huge request body is sent (issue #7, defect 7).

Talks HTTP only. One thread uploads a body of `--mb` MiB to /v1/completions (a text or
token-id prompt, sent with a Content-Length or chunked) while the main thread polls
/health back to back; it prints /health latency before and during the upload and what
the upload got back. Run it against two servers side by side to compare builds:

    python -m load.bench.big_body --base-url http://127.0.0.1:8100 --mb 60
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import threading
import time

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
    """Send the body and put (status or error name, seconds) on `results`."""
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
    results.put((status, round(time.perf_counter() - start, 3)))


def measure(base_url: str, mib: int, kind: str, chunked: bool, model: str) -> dict[str, object]:
    """The upload runs in its own process, so its client work never delays the probe."""
    body = _body(mib, kind).replace(b"%s", model.encode(), 1)
    results: mp.Queue = mp.Queue()
    done = threading.Event()
    with httpx.Client(base_url=base_url, timeout=300) as probe:
        idle = _poll(probe, None, 50)
        uploader = mp.get_context("fork").Process(
            target=_upload, args=(base_url, body, chunked, results)
        )
        uploader.start()

        def watch() -> None:
            uploader.join()
            done.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        busy = _poll(probe, done, 0)
        watcher.join()
    status, seconds = results.get(timeout=10)
    return {
        "upload_status": status,
        "upload_seconds": seconds,
        "health_idle_p50_ms": round(statistics.median(idle) * 1e3, 2),
        "health_busy_p50_ms": round(statistics.median(busy) * 1e3, 2) if busy else None,
        "health_busy_max_ms": round(max(busy) * 1e3, 2) if busy else None,
        "health_busy_count": len(busy),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--mb", type=int, default=60, help="body size in MiB")
    parser.add_argument("--kind", choices=("text", "ids"), default="text")
    parser.add_argument("--chunked", action="store_true", help="no Content-Length")
    parser.add_argument("--model", default="tiny-llama")
    args = parser.parse_args(argv)
    out = measure(args.base_url, args.mb, args.kind, args.chunked, args.model)
    print(
        json.dumps(
            {
                "base_url": args.base_url,
                "mb": args.mb,
                "kind": args.kind,
                "chunked": args.chunked,
                **out,
            }
        )
    )


if __name__ == "__main__":
    main()
