"""vNPU benchmarks on the modelled clock: isolation and preemption (README, "vNPU
partitions"). Real engines, real cache managers and tiers, emulated model shapes;
every figure is device time from the cost model, so it does not depend on host load.

    python -m server.vnpu.bench isolation   # neighbour ITL, idle vs saturated neighbour
    python -m server.vnpu.bench preemption  # urgent request: arrival -> first step
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache.block_hash import root_hash
from cache.layout import LAYOUT_VERSION
from npu_sim import tokenizer
from npu_sim.arbiter import CoreGroup
from npu_sim.device import get_device
from npu_sim.model_config import get_cost_model_config
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.vnpu import TIME_SLICE_SECONDS, slice_device
from server.config import Settings
from server.engine.request import EngineRequest
from server.vnpu.partition import VnpuDevice, build_vnpu_device
from server.vnpu.sim import ModelledDriver, SimVnpu

DEVICE = "ascend-910b"
NEIGHBOUR, NOISY = "llama-3-8b", "qwen2.5-7b"
MODES = ("hard", "time", "unpartitioned")


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    """`concurrency` clients each sending the next request as soon as one finishes."""

    concurrency: int
    prompt_tokens: int
    output_tokens: int
    priority: int = 0


@contextmanager
def partitioned(vnpus: list[str], **overrides: Any) -> Iterator[VnpuDevice]:
    """A real vNPU device (emulated models, `pace none`) in a temp dir."""
    root = Path(tempfile.mkdtemp(prefix="tkv-vnpu-"))
    base: dict[str, Any] = dict(
        data_dir=root / "d", pace="none", vnpu=vnpus, ddr_gb=0, flash_gb=0, device=DEVICE
    )
    settings = Settings(**(base | overrides))
    device = build_vnpu_device(settings, lambda _name: threading.Event().set)
    try:
        yield device
    finally:
        device.close()
        shutil.rmtree(root, ignore_errors=True)


class Clients:
    """Closed-loop clients on one vNPU of a `ModelledDriver`."""

    def __init__(
        self, driver: ModelledDriver, v: SimVnpu, load: ClosedLoop, numerics_id: str, seed: int
    ) -> None:
        self.driver, self.v, self.load = driver, v, load
        self.rng = random.Random(seed)
        self.stop_at = float("inf")
        self.root = root_hash(numerics_id, LAYOUT_VERSION, None)
        self.count = 0
        v.on_finish = self._finished

    def start(self, at: float = 0.0) -> None:
        for _ in range(self.load.concurrency):
            self.send(at)

    def send(
        self,
        at: float,
        priority: int | None = None,
        prompt: int | None = None,
        output: int | None = None,
    ) -> EngineRequest:
        self.count += 1
        n_prompt = prompt or self.load.prompt_tokens
        request = EngineRequest(
            request_id=f"{self.v.name}-{self.count}",
            prompt_token_ids=[self.rng.randrange(32, 127) for _ in range(n_prompt)],
            sampler=Sampler(SamplingParams(temperature=0.0), tokenizer.sampleable_mask),
            max_tokens=output or self.load.output_tokens,
            root_hash=self.root,
            priority=self.load.priority if priority is None else priority,
        )
        self.driver.arrive(self.v.name, request, at)
        return request

    def _finished(self, v: SimVnpu, request: EngineRequest, now: float) -> None:
        if request.priority == self.load.priority and now < self.stop_at:
            self.send(now)


def sim_vnpus(device: VnpuDevice, mode: str) -> list[SimVnpu]:
    """The device's engines, charged and grouped as `mode` says (see isolation())."""
    full = get_device(DEVICE)
    shared_cores = sum(v.slice.cores for v in device.vnpus)
    if mode == "time":
        group = CoreGroup("time-sliced", quantum=TIME_SLICE_SECONDS)
        dev = slice_device(full, shared_cores, full.hbm_bytes, "time-group")
    elif mode == "unpartitioned":
        group, dev = CoreGroup("device"), full
    out = []
    for v in device.vnpus:
        if mode == "hard":
            group, dev = CoreGroup(v.name), v.slice.device
        cost = get_cost_model_config(v.settings.served_model)
        out.append(SimVnpu(v.name, v.stack.core, cost, dev, group))
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_neighbours(
    mode: str, neighbour: ClosedLoop, noisy: ClosedLoop | None, duration: float
) -> tuple[SimVnpu, SimVnpu]:
    """Two vir08 vNPUs serving NEIGHBOUR (a) and NOISY (b), sharing the device as `mode`
    says (see isolation()), run for `duration` modelled seconds: a's clients send
    `neighbour`, b's send `noisy` (None: b stays idle). Returns (a, b) after the run, with
    their token times and busy seconds (their engines are closed)."""
    with partitioned([f"a=vir08:{NEIGHBOUR}", f"b=vir08:{NOISY}"]) as device:
        a, b = sim_vnpus(device, mode)
        driver = ModelledDriver([a, b])
        for seed, (v, stack, load) in enumerate(
            zip((a, b), device.vnpus, (neighbour, noisy), strict=True), start=1
        ):
            if load is not None:
                clients = Clients(driver, v, load, stack.stack.numerics_id, seed=seed)
                clients.stop_at = duration
                clients.start()
        driver.run(until=duration)
    return a, b


def isolation(duration: float, warmup: float) -> dict[str, Any]:
    """Neighbour's ITL with the other vNPU idle, then saturated, per sharing mode.

    hard: two vir08 slices (8 + 8 of 20 cores), each charged on its slice.
    time: the same 16 cores as one group, 1 ms round-robin turns.
    unpartitioned: both engines on the whole 20-core device, steps queued FIFO.
    HBM is the same in every mode (each engine's own vir08 share).
    """
    neighbour = ClosedLoop(concurrency=4, prompt_tokens=256, output_tokens=64)
    noisy = ClosedLoop(concurrency=32, prompt_tokens=2048, output_tokens=32)
    results: dict[str, Any] = {}
    for mode in MODES:
        for busy in (False, True):
            a, b = run_neighbours(mode, neighbour, noisy if busy else None, duration)
            itl = a.itls(since=warmup, until=duration)
            results[f"{mode}/{'saturated' if busy else 'idle'}"] = {
                "neighbour_itl_p50_ms": 1e3 * _pct(itl, 50),
                "neighbour_itl_p99_ms": 1e3 * _pct(itl, 99),
                "neighbour_gaps": len(itl),
                "noisy_busy_share": b.busy_seconds / duration,
            }
    for mode in MODES:
        idle, sat = results[f"{mode}/idle"], results[f"{mode}/saturated"]
        results[f"{mode}/p99_increase_pct"] = 100 * (
            sat["neighbour_itl_p99_ms"] / idle["neighbour_itl_p99_ms"] - 1
        )
    return results


def preemption(num_urgent: int, gap: float, seed: int) -> dict[str, Any]:
    """Urgent requests (priority 0) on a vNPU saturated by priority-1 work: modelled time
    from arrival to the start of their first step, with and without cutting the running
    step at a kernel boundary. The vNPU's HBM fits the background batch and little
    more, so admitting an urgent request preempts a background one (its KV stays
    cached, spills to DDR when evicted, and it resumes from cache)."""
    background = ClosedLoop(concurrency=16, prompt_tokens=1024, output_tokens=128, priority=1)
    results: dict[str, Any] = {}
    for cut in (True, False):
        spec = f"a=cores=8,hbm_gb=16.2:{NEIGHBOUR}"
        # reload_timeout_ms=0: a reload is waited for, whatever this host's load.
        with partitioned([spec], ddr_gb=16, max_num_seqs=16, reload_timeout_ms=0) as device:
            (a,) = sim_vnpus(device, "hard")
            driver = ModelledDriver([a], preempt=cut)
            numerics = device.vnpus[0].stack.numerics_id
            clients = Clients(driver, a, background, numerics, seed=seed)
            rng = random.Random(seed)
            urgent = []
            t = 2.0  # let the background batch fill the vNPU first
            for _ in range(num_urgent):
                t += rng.uniform(0.5, 1.5) * gap
                urgent.append(clients.send(t, priority=0, prompt=128, output=8))
            clients.stop_at = t + 1.0
            clients.start()
            driver.run(until=t + 1.0)
            wait = {
                r.request_id: a.first_step_start[r.request_id] - a.arrivals[r.request_id]
                for r in urgent
                if r.request_id in a.first_step_start
            }
            waits = list(wait.values())
            # Urgent requests that found an earlier urgent one in the running step do not
            # cut it (equal priority): their wait is that step's remainder.
            behind = [w for rid, w in wait.items() if rid not in a.cut_for]
            stats = a.core.cache.snapshot_stats()
            results["cut" if cut else "step_boundary"] = {
                "urgent": len(waits),
                "wait_p50_ms": 1e3 * _pct(waits, 50),
                "wait_p90_ms": 1e3 * _pct(waits, 90),
                "wait_p99_ms": 1e3 * _pct(waits, 99),
                "wait_max_ms": 1e3 * max(waits),
                "share_under_1ms": sum(w <= 1e-3 for w in waits) / len(waits),
                "steps_cut": a.num_cuts,
                "behind_urgent": len(behind) if cut else None,
                "wait_max_ms_when_cut": 1e3
                * max((w for rid, w in wait.items() if rid in a.cut_for), default=float("nan")),
                "requests_preempted": a.core.scheduler.num_preemptions,
                "tier_write_stored_bytes": {t.value: s.write_bytes for t, s in stats.tiers.items()},
                "hit_tokens": {t.value: n for t, n in stats.hit_tokens.items()},
            }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.vnpu.bench")
    sub = parser.add_subparsers(dest="what", required=True)
    iso = sub.add_parser("isolation")
    iso.add_argument("--duration", type=float, default=30.0, help="modelled seconds")
    iso.add_argument("--warmup", type=float, default=5.0, help="modelled seconds skipped")
    pre = sub.add_parser("preemption")
    pre.add_argument("--num-urgent", type=int, default=200)
    pre.add_argument("--gap", type=float, default=2.0, help="mean modelled s between urgent")
    pre.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.what == "isolation":
        out = isolation(args.duration, args.warmup)
    else:
        out = preemption(args.num_urgent, args.gap, args.seed)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
