"""vNPU telemetry: modelled utilisation per vNPU and per AI core, HBM use and queue depth,
as Prometheus series (`tierkv:vnpu_*`, `tierkv:npu_core_utilisation`) and as the
npu-smi-style status of `GET /npu`.

Utilisation is *modelled*: the share of wall time a vNPU's cores spent on steps by the
device clock (`EngineStats.modelled_busy_seconds`), over the last `WINDOW_SECONDS` (or
since the previous read, if that is longer ago). With `--pace real` a step lasts its
modelled time, so a saturated vNPU reads ~1. A hard-sliced vNPU's cores each read its
utilisation; the shared cores of time-sliced vNPUs read the sum of theirs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache.stats import Tier
from server.engine.async_engine import AsyncEngine
from server.stack import logical_block_bytes, model_shape
from server.vnpu.partition import VnpuDevice, VnpuStack

WINDOW_SECONDS = 10.0


class UtilisationMeter:
    """Busy share of wall time over a sliding window, from a busy-seconds counter.

    `read(busy)` may be called from any thread (a lock guards the samples)."""

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self._window = window
        self._samples: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def read(self, busy_seconds: float, now: float | None = None) -> float:
        """Utilisation in [0, 1] since the oldest sample kept (0 on the first read)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            # Keep one sample at least `window` old, so the figure spans the window.
            while len(self._samples) > 1 and now - self._samples[1][0] >= self._window:
                self._samples.popleft()
            self._samples.append((now, busy_seconds))
            t0, b0 = self._samples[0]
        if now <= t0:
            return 0.0
        return min(1.0, max(0.0, (busy_seconds - b0) / (now - t0)))


@dataclass(slots=True)
class VnpuStatus:
    """One vNPU's figures at one instant."""

    name: str
    model: str
    slicing: str
    cores: list[int]
    utilisation: float
    busy_seconds: float
    hbm_used_bytes: int
    hbm_capacity_bytes: int
    kv_blocks_used: int
    kv_blocks_total: int
    running: int
    waiting: int
    preemptions: int
    tier_used_bytes: dict[str, int]
    tier_capacity_bytes: dict[str, int]


class VnpuTelemetry:
    """Reads every vNPU's latest published stats (engine and cache snapshots)."""

    def __init__(self, device: VnpuDevice, engines: Sequence[AsyncEngine]) -> None:
        self.device = device
        self._engines = list(engines)
        self._meters = [UtilisationMeter() for _ in engines]

    def status(self) -> list[VnpuStatus]:
        return [
            _status(v, e, m)
            for v, e, m in zip(self.device.vnpus, self._engines, self._meters, strict=True)
        ]

    def core_utilisation(self, statuses: Sequence[VnpuStatus]) -> list[tuple[int, str, float]]:
        """(core id, owning vNPU names joined by "+" or "", utilisation) for every core."""
        owners: dict[int, list[VnpuStatus]] = {}
        for s in statuses:
            for core in s.cores:
                owners.setdefault(core, []).append(s)
        rows = []
        for core in range(self.device.ai_cores):
            held = owners.get(core, [])
            util = min(1.0, sum(s.utilisation for s in held))
            rows.append((core, "+".join(s.name for s in held), util))
        return rows


def _status(v: VnpuStack, engine: AsyncEngine, meter: UtilisationMeter) -> VnpuStatus:
    es, cs = engine.engine_stats, engine.cache_stats
    hbm = cs.tiers.get(Tier.HBM)
    logical = logical_block_bytes(v.settings)
    used_blocks = hbm.num_blocks if hbm is not None else 0
    total_blocks = v.stack.cache.pool.num_blocks
    weights = model_shape(v.settings).weight_bytes
    lower = {t.value: s for t, s in cs.tiers.items() if t is not Tier.HBM}
    stored_per_logical = v.stack.layout.block_bytes / logical
    return VnpuStatus(
        name=v.name,
        model=v.model_name,
        slicing=v.slice.slicing.value,
        cores=list(v.slice.core_ids),
        utilisation=meter.read(es.modelled_busy_seconds),
        busy_seconds=es.modelled_busy_seconds,
        hbm_used_bytes=weights + used_blocks * logical,
        hbm_capacity_bytes=v.slice.hbm_bytes,
        kv_blocks_used=used_blocks,
        kv_blocks_total=total_blocks,
        running=es.num_running,
        waiting=es.num_waiting + es.num_loading,
        preemptions=es.num_preemptions,
        # Lower tiers count stored bytes; report logical ones, as the quotas are given.
        tier_used_bytes={k: int(s.used_bytes / stored_per_logical) for k, s in lower.items()},
        tier_capacity_bytes={
            k: int(s.capacity_bytes / stored_per_logical) for k, s in lower.items()
        },
    )


class VnpuCollector(Collector):
    """The `tierkv:vnpu_*` and `tierkv:npu_core_utilisation` series, read at scrape time."""

    def __init__(self, telemetry: VnpuTelemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        statuses = self._telemetry.status()
        label = ["vnpu"]

        def gauge(name: str, doc: str, value: str) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=label)
            for s in statuses:
                g.add_metric([s.name], float(getattr(s, value)))
            return g

        yield gauge(
            "tierkv:vnpu_utilisation",
            f"Modelled busy share of the vNPU's cores over the last {WINDOW_SECONDS:g} s.",
            "utilisation",
        )
        busy = CounterMetricFamily(
            "tierkv:vnpu_modelled_busy_seconds", "Device time of the vNPU's steps.", labels=label
        )
        for s in statuses:
            busy.add_metric([s.name], s.busy_seconds)
        yield busy
        yield gauge("tierkv:vnpu_hbm_used_bytes", "Weights + KV blocks held.", "hbm_used_bytes")
        yield gauge("tierkv:vnpu_hbm_capacity_bytes", "The vNPU's HBM.", "hbm_capacity_bytes")
        yield gauge("tierkv:vnpu_num_requests_running", "Requests in the batch.", "running")
        yield gauge(
            "tierkv:vnpu_num_requests_waiting", "Queued, preempted or loading KV.", "waiting"
        )
        preempt = CounterMetricFamily(
            "tierkv:vnpu_num_preemptions", "Requests preempted on the vNPU.", labels=label
        )
        for s in statuses:
            preempt.add_metric([s.name], s.preemptions)
        yield preempt
        cores = GaugeMetricFamily(
            "tierkv:vnpu_ai_cores", "AI cores the vNPU runs on.", labels=["vnpu", "slicing"]
        )
        for s in statuses:
            cores.add_metric([s.name, s.slicing], len(s.cores))
        yield cores
        used = GaugeMetricFamily(
            "tierkv:vnpu_tier_used_bytes",
            "Bytes the vNPU holds in a shared tier.",
            labels=["vnpu", "tier"],
        )
        quota = GaugeMetricFamily(
            "tierkv:vnpu_tier_quota_bytes",
            "The vNPU's quota in a shared tier.",
            labels=["vnpu", "tier"],
        )
        for s in statuses:
            for tier, n in s.tier_used_bytes.items():
                used.add_metric([s.name, tier], n)
            for tier, n in s.tier_capacity_bytes.items():
                quota.add_metric([s.name, tier], n)
        yield used
        yield quota
        per_core = GaugeMetricFamily(
            "tierkv:npu_core_utilisation",
            "Modelled utilisation of one AI core (vnpu: who runs on it, '' for none).",
            labels=["core", "vnpu"],
        )
        for core, owner, util in self._telemetry.core_utilisation(statuses):
            per_core.add_metric([str(core), owner], util)
        yield per_core


def npu_status_json(telemetry: VnpuTelemetry) -> dict[str, object]:
    """The body of `GET /npu` (JSON)."""
    statuses = telemetry.status()
    dev = telemetry.device
    return {
        "device": dev.device_name,
        "ai_cores": dev.ai_cores,
        "hbm_bytes": dev.hbm_bytes,
        "vnpus": [
            {
                "name": s.name,
                "model": s.model,
                "slicing": s.slicing,
                "cores": s.cores,
                "utilisation": round(s.utilisation, 4),
                "hbm_used_bytes": s.hbm_used_bytes,
                "hbm_capacity_bytes": s.hbm_capacity_bytes,
                "kv_blocks_used": s.kv_blocks_used,
                "kv_blocks_total": s.kv_blocks_total,
                "running": s.running,
                "waiting": s.waiting,
                "preemptions": s.preemptions,
                "tier_used_bytes": s.tier_used_bytes,
                "tier_quota_bytes": s.tier_capacity_bytes,
            }
            for s in statuses
        ],
        "cores": [
            {"id": c, "vnpu": owner, "utilisation": round(u, 4)}
            for c, owner, u in telemetry.core_utilisation(statuses)
        ],
    }


def npu_status_text(telemetry: VnpuTelemetry) -> str:
    """`GET /npu` with `Accept: text/plain`: an npu-smi-like table."""
    status = npu_status_json(telemetry)
    mib = 1024**2
    lines = [
        f"+ tierkv npu-smi | device {status['device']} | {status['ai_cores']} AI cores | "
        f"HBM {int(status['hbm_bytes']) // mib} MiB (modelled) +",  # type: ignore[call-overload]
        f"| {'vNPU':<10} | {'model':<14} | {'slicing':<7} | {'cores':<9} | {'util%':>5} | "
        f"{'HBM used / total MiB':>21} | {'run':>4} | {'wait':>4} |",
    ]
    for v in status["vnpus"]:  # type: ignore[attr-defined]
        cores = v["cores"]
        span = f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])
        hbm = f"{v['hbm_used_bytes'] // mib} / {v['hbm_capacity_bytes'] // mib}"
        lines.append(
            f"| {v['name']:<10} | {v['model']:<14} | {v['slicing']:<7} | {span:<9} | "
            f"{100 * v['utilisation']:>5.1f} | {hbm:>21} | {v['running']:>4} | {v['waiting']:>4} |"
        )
    cells = " ".join(
        f"{c['id']}:{100 * c['utilisation']:.0f}%"
        for c in status["cores"]  # type: ignore[attr-defined]
    )
    lines.append(f"| AI cores (util%): {cells}")
    return "\n".join(lines) + "\n"
