"""Live tierkv servers for tests: uvicorn in a thread on a pre-bound free port.

Each server is a real stack (embedded Redis under its data dir, LMDB on disk, the
numpy model) with `pace=none`. Readiness is polled on /health, never slept for.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from npu_sim.model_config import get_model_config
from server.app import build_app
from server.config import GB, Settings
from server.stack import kv_layout

# A bound on waiting for readiness, not a speed claim: SmolLM2's weights (dequantised and
# re-quantised at start-up) took about 30 s on a loaded 2-core machine in one suite run.
STARTUP_TIMEOUT_S = 120.0


@dataclass
class LiveServer:
    url: str
    settings: Settings
    client: httpx.Client
    app: FastAPI | None = None  # the running app (for tests that reach into app.state)

    def completion_body(self, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
        """A greedy `/v1/completions` body that generates exactly `max_tokens`."""
        return {
            "model": self.settings.served_model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            **extra,
        }

    def complete(self, prompt: str, max_tokens: int = 16, **extra: Any) -> dict[str, Any]:
        r = self.client.post(
            "/v1/completions", json=self.completion_body(prompt, max_tokens, **extra)
        )
        assert r.status_code == 200, r.text
        return r.json()

    def complete_in_threads(
        self,
        prompts: Sequence[str],
        max_tokens: int,
        timeout_s: float,
        on_start: Callable[[int], None] | None = None,
        one_at_a_time: bool = False,
    ) -> list[Any]:
        """POST each prompt's completion from its own thread; returns, per prompt, the
        response's JSON or the exception (a hung request surfaces as its timeout).

        `on_start(i)` runs on this thread right after request `i`'s thread started (the
        other side of a race, say an offload). `one_at_a_time`: wait for each request
        before starting the next (only the races with `on_start` overlap it).
        """
        results: list[Any] = [None] * len(prompts)

        def ask(i: int) -> None:
            body = self.completion_body(prompts[i], max_tokens)
            try:
                results[i] = self.client.post(
                    "/v1/completions", json=body, timeout=timeout_s
                ).json()
            except Exception as exc:  # a hang surfaces as a timeout here
                results[i] = exc

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for i, thread in enumerate(threads):
            thread.start()
            if on_start is not None:
                on_start(i)
            if one_at_a_time:
                thread.join(timeout_s + 5)
        for thread in threads:
            thread.join(timeout_s + 5)
        return results

    def offload(self, tier: str) -> int:
        r = self.client.post("/cache/offload", json={"tier": tier})
        assert r.status_code == 200, r.text
        return r.json()["moved_blocks"]

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample from /metrics (0 if absent)."""
        text = self.client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels_match = all(sample.labels.get(k) == v for k, v in labels.items())
                if sample.name == name and labels_match:
                    return sample.value
        return 0.0

    def cache_stats(self) -> dict[str, Any]:
        return self.client.get("/cache/stats").json()


def hbm_gb_for_blocks(num_blocks: int, model: str = "tiny-llama", block_size: int = 16) -> float:
    """The --hbm-gb that leaves exactly `num_blocks` KV blocks after the weights."""
    settings = Settings(model=model, block_size=block_size)
    size = get_model_config(model).weight_bytes + num_blocks * kv_layout(settings).block_bytes
    return size / GB


@contextmanager
def run_server(settings: Settings) -> Iterator[LiveServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = build_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=120)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if not thread.is_alive():
                raise RuntimeError("server thread exited during start-up")
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S}s")
            time.sleep(0.02)  # poll interval, not a stand-in for work
        yield LiveServer(url, settings, client, app)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
