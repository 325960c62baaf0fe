"""Reliability of whole server processes (`python -m server serve`): a truncated flash
file, `kill -9` during demotions, an external Redis killed and restarted. Each test
runs a few requests; readiness and recovery are polled with bounds, never slept for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from cache.embedded_redis import redis_server_executable

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "".join(f"Prompt {n}, row {i}: the cache must survive. " for i in range(8)) for n in range(6)
]
MAX_TOKENS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    client: httpx.Client
    log: Path

    def complete(self, prompt: str) -> tuple[str, int]:
        body = {
            "model": "tiny-llama",
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        }
        r = self.client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        return out["choices"][0]["text"], out["usage"]["prompt_tokens_details"]["cached_tokens"]

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.05)  # poll interval


@contextmanager
def serve(data_dir: Path, *args: str) -> Iterator[Proc]:
    port = free_port()
    log = data_dir.parent / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERKV_")}
    env["PYTHONPATH"] = str(ROOT)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--port",
                str(port),
                "--pace",
                "none",
                "--verify-wide-context",  # kept decode contexts checked, as in-process
                "--data-dir",
                str(data_dir),
                "--hbm-gb",
                "0.05",
                "--ddr-gb",
                "0.05",
                "--flash-gb",
                "0.1",
                "--max-model-len",
                "2048",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    proc = Proc(process, client, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            return client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 60, "server start-up")
        yield proc
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def redis_servers_under(data_dir: Path) -> list[int]:
    """Pids of live redis-server processes whose working dir is `data_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip().startswith("redis-server") and Path(
                os.readlink(entry / "cwd")
            ) == data_dir:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_truncated_flash_file_is_quarantined_and_the_server_serves(data_dir: Path) -> None:
    with serve(data_dir) as server:
        cold = [server.complete(p)[0] for p in PROMPTS]
    data = data_dir / "flash" / "data.mdb"
    assert data.stat().st_size > 0
    os.truncate(data, data.stat().st_size // 2)
    with serve(data_dir) as server:  # used to die of SIGBUS at start-up
        assert server.metric("tierkv:tier_up", tier="flash") == 0
        assert [server.complete(p)[0] for p in PROMPTS] == cold
    assert "flash tier quarantined" in server.log.read_text()
    assert any(p.name.startswith("flash.quarantined-") for p in data_dir.iterdir())
    assert redis_servers_under(data_dir.resolve()) == []  # no orphan left behind


def test_kill_9_during_demotions_then_a_warm_restart(data_dir: Path) -> None:
    # The first half of the prompts is demoted to flash for good; the kill lands inside
    # the demotion of the second half. Slow DDR operations (injected) keep that demotion
    # open: flash's half writes (one LMDB transaction, all or nothing) while DDR's half
    # is still reading or deleting, before the manager has accounted for any of it.
    settled, in_flight = PROMPTS[:3], PROMPTS[3:]
    with serve(data_dir, "--flash-gb", "1", "--tier-faults", "ddr:latency_ms=1500") as server:
        cold = [server.complete(p)[0] for p in PROMPTS[:3]]
        for tier in ("hbm", "ddr"):
            assert server.client.post("/cache/offload", json={"tier": tier}).status_code == 200
        cold += [server.complete(p)[0] for p in in_flight]
        assert server.client.post("/cache/offload", json={"tier": "hbm"}).status_code == 200
        flash_file = data_dir / "flash" / "data.mdb"
        size_before = flash_file.stat().st_size
        demote = threading.Thread(
            target=lambda: _ignore_errors(
                server.client.post, "/cache/offload", json={"tier": "ddr"}
            )
        )
        demote.start()
        wait_for(lambda: flash_file.stat().st_size > size_before, 20, "demotion writing flash")
        assert demote.is_alive()  # the demotion has not finished
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        demote.join()
    with serve(data_dir, "--flash-gb", "1") as server:  # flash reused, orphan Redis cleared
        answers = [server.complete(p) for p in settled + in_flight]
        assert [text for text, _ in answers] == cold  # 0 wrong tokens
        assert all(cached > 0 for _, cached in answers[:3])  # warm: settled blocks reused
        assert server.metric("tierkv:tier_up", tier="flash") == 1
    assert redis_servers_under(data_dir.resolve()) == []


def _ignore_errors(fn: Callable[..., object], *args: object, **kwargs: object) -> None:
    try:
        fn(*args, **kwargs)
    except httpx.TransportError:
        pass  # the server was killed under the request


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_server_executable(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        wait_for(lambda: _pings(client), 10, "external redis start-up")
    finally:
        client.close()
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_an_external_redis_killed_mid_load_then_back(data_dir: Path) -> None:
    port = free_port()
    redis_process = start_redis(port, data_dir.parent / "ext-redis")
    try:
        with serve(
            data_dir, "--redis-url", f"redis://127.0.0.1:{port}", "--flash-gb", "0"
        ) as server:
            cold = [server.complete(p)[0] for p in PROMPTS]
            assert server.client.post("/cache/offload", json={"tier": "hbm"}).status_code == 200
            redis_process.kill()
            redis_process.wait()
            results = [server.complete(p)[0] for p in PROMPTS]  # 0 failed requests
            assert results == cold  # 0 wrong tokens
            wait_for(lambda: server.metric("tierkv:tier_up", tier="ddr") == 0, 10, "DDR down")
            redis_process = start_redis(port, data_dir.parent / "ext-redis")
            # DDR must be back in use within 10 s of Redis returning (bounded poll).
            wait_for(lambda: server.metric("tierkv:tier_up", tier="ddr") == 1, 10, "DDR back")
            written = server.metric("tierkv:tier_write_bytes_total", tier="ddr")
            assert server.client.post("/cache/offload", json={"tier": "hbm"}).status_code == 200
            assert server.metric("tierkv:tier_write_bytes_total", tier="ddr") > written
            assert [server.complete(p)[0] for p in PROMPTS] == cold
            assert server.metric("tierkv:prefix_cache_hits_total", tier="ddr") > 0
    finally:
        redis_process.kill()
        redis_process.wait()
