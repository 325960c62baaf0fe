"""TTFT of a flash hit vs its recompute, with --load-policy always and cost.

`python scripts/load_vs_recompute.py nfs,nvme`: for each flash media preset and each
policy, starts `tierkv serve --emulate llama-3-8b --device h100-sxm --pace real` (DDR
off, so an HBM offload lands in flash), and for 3 fresh 4k-token prompts times the cold
TTFT, offloads HBM, and times the same prompt again; prints the medians.
"""

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ttft(client, prompt):
    t = time.perf_counter()
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "llama-3-8b",
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        cached = None
        first = None
        for line in r.iter_lines():
            if line.startswith("data: {") and first is None and '"text"' in line:
                first = time.perf_counter() - t
            if line.startswith("data: {") and '"usage"' in line:
                u = json.loads(line[6:]).get("usage")
                if u:
                    cached = u["prompt_tokens_details"]["cached_tokens"]
    return first, cached


for media, policy in [(m, p) for m in sys.argv[1].split(",") for p in ("always", "cost")]:
    d = tempfile.mkdtemp(prefix="xo-")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--emulate",
            "llama-3-8b",
            "--device",
            "h100-sxm",
            "--pace",
            "real",
            "--port",
            str(port),
            "--data-dir",
            d + "/data",
            "--hbm-gb",
            "40",
            "--ddr-gb",
            "0",
            "--flash-gb",
            "8",
            "--flash-media",
            media,
            "--load-policy",
            policy,
            "--max-model-len",
            "8192",
            "--log-level",
            "warning",
        ]
    )
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    for _ in range(300):
        try:
            if c.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    rows = []
    for i in range(3):
        prompt = f"{i} " + "y" * 4094
        cold, _ = ttft(c, prompt)
        c.post("/cache/offload", json={"tier": "hbm"})
        hit, cached = ttft(c, prompt)
        rows.append((cold, hit, cached))
    proc.terminate()
    proc.wait()
    cold = statistics.median(r[0] for r in rows)
    hit = statistics.median(r[1] for r in rows)
    print(
        f"flash media {media:5s} load-policy {policy:6s}: cold {cold * 1e3:.0f} ms, "
        f"after offload {hit * 1e3:.0f} ms ({hit / cold:.2f}x cold), "
        f"cached_tokens {rows[0][2]}",
        flush=True,
    )
