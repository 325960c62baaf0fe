"""Figures for the README's Reliability section, from one run on this machine.

Starts `python -m server serve` twice per reload-timeout setting and measures, for one
~1k-token prompt with max_tokens=1 (so latency ~ TTFT): cold, a DDR hit, and a DDR
"hit" while the embedded Redis is SIGSTOPped; then a kill -9 of redis-server and the
time until DDR is up again; then a SIGTERM restart and the first request after it.

    PYTHONPATH=. python scripts/reliability_figures.py
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from load.bench._servers import ManagedServer, tierkv_server

PROMPT = "".join(f"Line {i}: a prompt whose KV goes down the tiers. " for i in range(20))


def start(data_dir: Path, *args: str) -> tuple[ManagedServer, httpx.Client]:
    """A live server (tiny tiers, `--pace none`), healthy, and a client for it."""
    flags = ("--pace", "none", "--hbm-gb", "0.05", "--ddr-gb", "0.05", "--flash-gb", "0.1")
    server = tierkv_server(data_dir, *flags, "--log-level", "warning", *args)
    server.start()  # waits for /health; raises with the log tail if the server dies
    return server, httpx.Client(base_url=server.base_url, timeout=120)


def stop(server: ManagedServer, client: httpx.Client) -> None:
    client.close()
    server.stop()  # SIGTERM (a graceful, warm shutdown), SIGKILL only after a timeout


def ask(client: httpx.Client, prompt: str = PROMPT) -> tuple[float, int]:
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 1, "temperature": 0}
    t0 = time.perf_counter()
    r = client.post("/v1/completions", json=body)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    return seconds, r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def redis_pid(data_dir: Path) -> int:
    c = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
    try:
        return int(c.info("server")["process_id"])
    finally:
        c.close()


def stalled_reloads(timeout_ms: int, repeats: int) -> dict[str, float]:
    data_dir = Path(tempfile.mkdtemp(prefix="tkv-rel-")) / "d"
    server, client = start(data_dir, "--flash-gb", "0", "--reload-timeout-ms", str(timeout_ms))
    out: dict[str, list[float]] = {"cold": [], "ddr_hit": [], "ddr_stalled": []}
    try:
        for n in range(repeats):
            prompt = f"{n} {PROMPT}"
            out["cold"].append(ask(client, prompt)[0])
            client.post("/cache/offload", json={"tier": "hbm"})
            seconds, cached = ask(client, prompt)
            assert cached > 0
            out["ddr_hit"].append(seconds)
            client.post("/cache/offload", json={"tier": "hbm"})
            pid = redis_pid(data_dir)
            os.kill(pid, signal.SIGSTOP)
            try:
                out["ddr_stalled"].append(ask(client, prompt)[0])
            finally:
                os.kill(pid, signal.SIGCONT)
    finally:
        stop(server, client)
    return {k: statistics.median(v) for k, v in out.items()}


def redis_recovery_and_warm_restart() -> dict[str, float]:
    data_dir = Path(tempfile.mkdtemp(prefix="tkv-rel-")) / "d"
    server, client = start(data_dir)
    figures: dict[str, float] = {}
    try:
        figures["cold_before_restart"] = ask(client)[0]
        client.post("/cache/offload", json={"tier": "hbm"})
        old_pid = redis_pid(data_dir)
        os.kill(old_pid, signal.SIGKILL)
        t0 = time.monotonic()
        while True:  # a new redis-server answers, the index was cleared, DDR is up
            try:
                restarted = redis_pid(data_dir) != old_pid
            except (redis.RedisError, OSError):
                restarted = False
            if (
                restarted
                and metric(client, "tierkv:tier_up", tier="ddr") == 1
                and metric(client, "tierkv:tier_blocks", tier="ddr") == 0
            ):
                break
            time.sleep(0.02)
        figures["ddr_up_after_kill_s"] = time.monotonic() - t0
        ask(client, "again: " + PROMPT)
        client.post("/cache/offload", json={"tier": "hbm"})
        figures["ddr_hit_after_redis_restart"], cached = ask(client, "again: " + PROMPT)
        figures["ddr_hit_tokens_after_restart"] = metric(
            client, "tierkv:prefix_cache_hits_total", tier="ddr"
        )
    finally:
        stop(server, client)
    server, client = start(data_dir)
    try:
        # The first prompt died with the killed Redis; the second was in HBM and DDR at
        # SIGTERM, so the write-back put it in flash.
        figures["first_after_restart"], figures["cached_after_restart"] = ask(
            client, "again: " + PROMPT
        )
    finally:
        stop(server, client)
    return figures


def main() -> None:
    for timeout_ms in (300, 0):
        figures = stalled_reloads(timeout_ms, repeats=3 if timeout_ms else 1)
        print(
            f"reload-timeout-ms {timeout_ms}: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in figures.items())
        )
    print(redis_recovery_and_warm_restart())


if __name__ == "__main__":
    main()
