"""Builds one engine stack per vNPU (`--vnpu`) on a shared DDR Redis.

Each vNPU gets what a single-engine server gets, cut to its slice: its own scheduler,
HBM block pool (the slice's HBM minus its model's weights), model and executor charging
steps on its `DeviceSlice.device`. The lower tiers are the device's unified pool, with
a quota per vNPU:

* DDR: one Redis (embedded, or `--redis-url`) for every vNPU; each vNPU's keys carry
  its own namespace (`tierkv.<model>.v<layout>.vnpu-<name>`), and its cache manager
  counts its bytes against its quota, so one vNPU can never evict another's blocks.
* flash: one LMDB environment per vNPU under `<data-dir>/vnpu/<name>/flash` (LMDB allows
  one open environment per file and process), each with its quota.

Quotas: `--ddr-gb` and `--flash-gb` are split between the vNPUs in proportion to their
HBM. Priority preemption is on for every vNPU engine (see `Scheduler`). Time-sliced
vNPUs book their steps on one `SharedCores`, so they never overlap on the device clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from cache.embedded_redis import EmbeddedRedis
from cache.stats import Tier
from cache.supervisor import RedisSupervisor
from npu_sim.arbiter import SharedCores
from npu_sim.device import get_device
from npu_sim.model_config import get_model_config
from npu_sim.vnpu import DeviceSlice, Slicing
from server.config import GB, Settings
from server.lower_tiers import redis_maxmemory
from server.stack import (
    ConfigError,
    EngineSlice,
    EngineStack,
    build_stack,
    hbm_num_blocks,
    stored_fraction,
)


@dataclass(slots=True)
class VnpuStack:
    """One vNPU: its slice, the settings its engine was built from, and the stack."""

    slice: DeviceSlice
    settings: Settings
    stack: EngineStack

    @property
    def name(self) -> str:
        return self.slice.name

    @property
    def model_name(self) -> str:
        return self.settings.served_model


@dataclass(slots=True)
class VnpuDevice:
    """Every vNPU of the device, in `--vnpu` order, and the Redis they share."""

    device_name: str
    ai_cores: int
    hbm_bytes: int
    vnpus: list[VnpuStack]
    embedded_redis: EmbeddedRedis | None
    supervisor: RedisSupervisor | None = None  # restarts the embedded Redis

    def close(self) -> None:
        """Close every vNPU's stack (write-back included), then the shared Redis."""
        if self.supervisor is not None:
            self.supervisor.stop()
        try:
            for v in self.vnpus:
                v.stack.close()
        finally:
            if self.embedded_redis is not None:
                self.embedded_redis.stop()


def vnpu_settings(
    settings: Settings, sl: DeviceSlice, share: float, redis_url: str | None
) -> Settings:
    """The single-engine settings of vNPU `sl`: its model (emulated when MODEL is a
    cost-model shape), its HBM, `share` of the DDR and flash quotas, its own data dir."""
    try:
        get_model_config(sl.model)
        model, emulate = sl.model, None
    except ValueError:
        model, emulate = settings.model, sl.model
    return settings.model_copy(
        update={
            "model": model,
            "emulate": emulate,
            "hbm_gb": sl.hbm_bytes / GB,
            "ddr_gb": settings.ddr_gb * share,
            "flash_gb": settings.flash_gb * share,
            "data_dir": settings.data_dir / "vnpu" / sl.name,
            "redis_url": redis_url,
            "vnpu": None,
            # One publisher per endpoint: KV events stay off on vNPU engines.
            "kv_events_endpoint": None,
            "kv_events_replay_endpoint": None,
        }
    )


def check_fits(settings: Settings) -> None:
    """Raise `ConfigError` if a vNPU's model leaves too little of its HBM for KV."""
    slices = settings.vnpu_slices
    total_hbm = sum(s.hbm_bytes for s in slices)
    for sl in slices:
        try:
            hbm_num_blocks(vnpu_settings(settings, sl, sl.hbm_bytes / total_hbm, None))
        except ConfigError as exc:
            raise ConfigError(f"vnpu {sl.name}: {exc}") from None


def build_vnpu_device(
    settings: Settings, wakeup_for: Callable[[str], Callable[[], None]]
) -> VnpuDevice:
    """Start the shared Redis and build every vNPU's stack (blocking; run off the loop).

    `wakeup_for(name)` gives the callable that wakes vNPU `name`'s engine thread.
    Raises `ConfigError` (from `build_stack`) when a model does not fit its slice.
    """
    slices = settings.vnpu_slices
    total_hbm = sum(s.hbm_bytes for s in slices)
    device = get_device(settings.device)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    owns = [vnpu_settings(settings, sl, sl.hbm_bytes / total_hbm, None) for sl in slices]
    with contextlib.ExitStack() as undo:
        embedded: EmbeddedRedis | None = None
        url = settings.redis_url
        if settings.ddr_bytes > 0 and url is None:
            # Sized in the bytes the vNPUs really store, as on one engine (stack.py).
            stored = sum(int(own.ddr_bytes * stored_fraction(own)) for own in owns)
            embedded = EmbeddedRedis(settings.data_dir, redis_maxmemory(stored)).start()
            undo.callback(embedded.stop)
            url = embedded.url
        vnpus: list[VnpuStack] = []
        shared = SharedCores("time-sliced")  # the one group of time-sliced vNPUs
        wakeups = [wakeup_for(sl.name) for sl in slices]
        for sl, own, wakeup in zip(slices, owns, wakeups, strict=True):
            own = own.model_copy(update={"redis_url": url})
            cores = shared if sl.slicing is Slicing.TIME else None
            engine_slice = EngineSlice(sl.device, f".vnpu-{sl.name}", cores, embedded is not None)
            stack = build_stack(own, wakeup, engine_slice)
            undo.callback(stack.close)
            # The shared Redis is the device's: a vNPU's stack must not stop it.
            stack.embedded_redis = None
            vnpus.append(VnpuStack(sl, own, stack))
        supervisor = None
        if embedded is not None and url is not None:
            healths = [v.stack.cache.health[Tier.DDR] for v in vnpus]
            supervisor = RedisSupervisor(url, healths, embedded, _call_all(wakeups)).start()
        undo.pop_all()
    return VnpuDevice(device.name, device.ai_cores, device.hbm_bytes, vnpus, embedded, supervisor)


def _call_all(callbacks: list[Callable[[], None]]) -> Callable[[], None]:
    def call() -> None:
        for callback in callbacks:
            callback()

    return call
