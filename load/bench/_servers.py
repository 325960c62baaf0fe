"""Starting servers for benchmarks and tests: a subprocess on a free port, ready when
``GET /health`` answers 200 (polled, never a fixed sleep), stopped at the end. Also the
emulated flash-only server of the reload scripts and their warm-then-offload step, and
one blocking greedy completion (the shared-pool visibility scripts).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from load.client import ClientOptions, RequestRecord, make_client, stream_request
from load.workloads import Api

# What `emulated_flash_server` serves (clients name it as the model).
EMULATED_MODEL = "llama-3-8b"


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message ends with the
    tail of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedServer:
    """A server subprocess in its own process group, used as a context manager.

    ``argv`` must make the server listen on 127.0.0.1:``port``. Output goes to
    ``log_path``. Entering waits for health (ServerStartError on exit or timeout);
    leaving sends SIGTERM to the group, then SIGKILL after ``stop_timeout_s``.
    """

    def __init__(
        self,
        argv: list[str],
        port: int,
        log_path: Path,
        startup_timeout_s: float = 180.0,
        stop_timeout_s: float = 20.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        if self._proc is None:
            raise RuntimeError("server not started")
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.base_url}/health"
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise ServerStartError(
                        f"{self.argv[:4]} exited with {self._proc.returncode}\n{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{url} not healthy after {self.startup_timeout_s:.0f}s\n{self.log_tail()}"
                    )
                time.sleep(0.1)  # poll interval, not a wait for readiness

    def stop(self) -> None:
        """Stop the whole process group: even if the server died, its children (the
        embedded redis-server) may still be running in it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()

    def log_tail(self, num_lines: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-num_lines:])

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def tierkv_server(
    data_dir: Path,
    *flags: str,
    port: int | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = 180.0,
    checkout: Path | None = None,
) -> ManagedServer:
    """``python -m server serve`` on 127.0.0.1 with ``--data-dir`` and extra ``flags``.

    ``checkout``: serve that source tree's code (``PYTHONPATH`` set to it, and ``-P`` so
    the working directory's does not win), e.g. to compare two commits side by side."""
    port = port or free_port()
    python = [sys.executable] if checkout is None else [sys.executable, "-P"]
    argv = [
        *python,
        "-m",
        "server",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *flags,
    ]
    env = None if checkout is None else dict(os.environ, PYTHONPATH=str(checkout))
    log = log_path or data_dir / "server.log"
    return ManagedServer(argv, port, log, startup_timeout_s, env=env)


def complete(client: httpx.Client, base_url: str, prompt: str) -> tuple[str, int]:
    """One greedy 8-token `tiny-llama` completion of ``prompt``: (text, cached prompt
    tokens). Raises `httpx.HTTPStatusError` unless the server answers 2xx."""
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    r = client.post(f"{base_url}/v1/completions", json=body)
    r.raise_for_status()
    data = r.json()
    return data["choices"][0]["text"], data["usage"]["prompt_tokens_details"]["cached_tokens"]


def bare_sse_server(log_path: Path, port: int | None = None) -> ManagedServer:
    """The bare FastAPI SSE app of ``load.bench.bare_sse`` under uvicorn."""
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "load.bench.bare_sse:build_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return ManagedServer(argv, port, log_path, startup_timeout_s=60.0)


def emulated_flash_server(data_dir: Path, *flags: str) -> ManagedServer:
    """`tierkv serve --emulate llama-3-8b --device h100-sxm --pace real` (steps and
    transfers last their modelled time) with 40 GB of HBM, DDR off and 8 GB of flash, so
    an HBM offload lands in flash; `flags` add to or override these (the last wins)."""
    return tierkv_server(
        data_dir,
        *("--emulate", EMULATED_MODEL, "--device", "h100-sxm", "--pace", "real"),
        *("--hbm-gb", "40", "--ddr-gb", "0", "--flash-gb", "8", "--max-model-len", "8192"),
        *("--log-level", "warning"),
        *flags,
    )


async def warm_then_offload(base_url: str, prompts: list[str]) -> list[RequestRecord]:
    """Send each prompt alone, one after the other (one output token), then
    `POST /cache/offload {"tier": "hbm"}`: their blocks leave HBM for the tier below.

    Returns the records (times relative to the first request's start). Raises
    `RuntimeError` if a request or the offload fails.
    """
    opts = ClientOptions(base_url=base_url, model=EMULATED_MODEL)
    records = []
    async with make_client() as client:
        t0 = time.perf_counter()
        for i, prompt in enumerate(prompts):
            record = await stream_request(client, opts, Api.COMPLETIONS, prompt, 1, i, t0)
            if not record.is_ok or record.ttft_s is None:
                raise RuntimeError(f"request failed: HTTP {record.status} {record.error}")
            records.append(record)
        resp = await client.post(f"{base_url}/cache/offload", json={"tier": "hbm"})
        if resp.status_code != 200:
            raise RuntimeError(f"POST /cache/offload: HTTP {resp.status_code} {resp.text}")
    return records
