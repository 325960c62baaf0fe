"""Builds the engine stack from `Settings`: device, model, tiers, cache manager, executor.

Opening the lower tiers (flash, DDR's Redis, the shared pool, injected faults) is
`server.lower_tiers`; this module sizes everything and builds the rest on them.

Start-up does blocking work (spawning Redis, drawing weights, scanning LMDB), so the
app's lifespan runs `build_stack` in a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cache.embedded_redis import EmbeddedRedis
from cache.events import KVEventPublisher, ignore_event
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.pooled_manager import SharedPoolCacheManager
from cache.stats import Tier
from cache.supervisor import RedisSupervisor
from cache.tiers.faulty import parse_tier_faults
from npu_sim.arbiter import SharedCores
from npu_sim.device import DeviceSpec, get_device
from npu_sim.emulated import EmulatedModel, stored_head_dim
from npu_sim.executor import Executor, Pace, StepModel
from npu_sim.links import TierPaths, TransferClock, get_media
from npu_sim.model import Model
from npu_sim.model_config import ModelConfig, get_cost_model_config, get_model_config
from npu_sim.pretrained import is_pretrained, load_pretrained
from npu_sim.tokenizers import ByteTokenizer, Tokenizer
from server.config import GB, LoadPolicy, Settings
from server.engine.core import EngineCore
from server.engine.load_planner import LoadPlanner
from server.engine.scheduler import Scheduler, SchedulerConfig
from server.lower_tiers import open_lower_tiers

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Settings that cannot work together (say, an HBM too small for max_model_len)."""


@dataclass(slots=True)
class EngineStack:
    core: EngineCore
    cache: CacheManager
    layout: KVLayout
    embedded_redis: EmbeddedRedis | None
    numerics_id: str  # goes into every block hash (see Model.numerics_id)
    tokenizer: Tokenizer
    supervisor: RedisSupervisor | None = None
    shutdown_drain_s: float = 0.0
    # Modelled cost of tier transfers (npu_sim.links), charged by the transfer lanes.
    transfer_clock: TransferClock | None = None
    events: KVEventPublisher | None = None  # set when --kv-events-endpoint is

    def close(self) -> None:
        """Graceful: write back to flash (bounded), then stop. Call after the engine stopped."""
        if self.supervisor is not None:
            self.supervisor.stop()
        try:
            self.cache.write_back(self.shutdown_drain_s)
        finally:
            self.cache.close()
            if self.events is not None:
                self.events.close()
            if self.embedded_redis is not None:
                self.embedded_redis.stop()


def model_shape(settings: Settings) -> ModelConfig:
    """The shape whose KV layout, weights and capacities the server uses."""
    if settings.emulate is not None:
        return get_cost_model_config(settings.emulate)
    return get_model_config(settings.model)


def kv_layout(settings: Settings) -> KVLayout:
    """The stored KV layout. Under --emulate, heads keep `stored_head_dim` elements."""
    model = model_shape(settings)
    head_dim = model.head_dim
    if settings.emulate is not None:
        head_dim = stored_head_dim(model, settings.kv_bytes_fraction)
    return KVLayout(
        model_id=model.name,
        num_layers=model.num_layers,
        num_kv_heads=model.num_kv_heads,
        head_dim=head_dim,
        block_size=settings.block_size,
        dtype=model.kv_dtype,
    )


def logical_block_bytes(settings: Settings) -> int:
    """Bytes of one KV block of the model's real shape (what capacities count)."""
    return model_shape(settings).kv_bytes_per_token * settings.block_size


def stored_fraction(settings: Settings) -> float:
    """Stored bytes per logical byte: 1 for the numpy model, ~kv-bytes-fraction emulated."""
    return kv_layout(settings).block_bytes / logical_block_bytes(settings)


def load_planner(
    settings: Settings,
    cost_config: ModelConfig,
    clock: TransferClock,
    device: DeviceSpec | None = None,
) -> LoadPlanner | None:
    """The load-vs-recompute planner of `--load-policy cost` (None: always reload)."""
    if settings.load_policy is not LoadPolicy.COST:
        return None
    return LoadPlanner(
        model=cost_config,
        device=device or get_device(settings.device),
        paths=clock.paths,
        logical_block_bytes=logical_block_bytes(settings),
        block_size=settings.block_size,
        chunk_tokens=settings.max_num_batched_tokens,
    )


def _charge_transfer(
    clock: TransferClock, tier: Tier, stored_bytes: int, started: float, write: bool
) -> None:
    clock.finish(tier.value, stored_bytes, started, write=write)


def transfer_clock(settings: Settings) -> TransferClock:
    """The modelled clock of HBM <-> DDR/flash transfers for these settings."""
    paths = TierPaths(
        host_link=get_device(settings.device).host_link,
        ddr=get_media(settings.ddr_media),
        flash=get_media(settings.flash_media),
    )
    return TransferClock(
        paths, logical_per_stored=1 / stored_fraction(settings), pace=settings.pace == "real"
    )


def hbm_num_blocks(settings: Settings) -> int:
    """KV blocks that fit in the server's HBM after the model weights (logical bytes)."""
    device = get_device(settings.device)
    model = model_shape(settings)
    if settings.hbm_bytes > device.hbm_bytes:
        raise ConfigError(
            f"hbm-gb {settings.hbm_bytes / GB:g} exceeds the {device.name}'s HBM "
            f"({device.hbm_bytes / 1024**3:.0f} GiB)"
        )
    free = settings.hbm_bytes - model.weight_bytes
    num_blocks = max(0, free // logical_block_bytes(settings))
    needed = -(-settings.max_model_len // settings.block_size)
    if num_blocks < needed:
        raise ConfigError(
            f"hbm-gb {settings.hbm_bytes / GB:g} leaves {num_blocks} KV blocks after "
            f"{model.weight_bytes / 1024**2:.1f} MiB of weights, but one max-model-len "
            f"({settings.max_model_len}) sequence needs {needed}: raise --hbm-gb or lower "
            "--max-model-len"
        )
    return num_blocks


@dataclass(frozen=True, slots=True)
class EngineSlice:
    """What a vNPU (`server.vnpu`) changes in its engine stack: the slice of the device
    its steps are charged on, a suffix keeping its DDR/flash keys apart from the other
    vNPUs', and the cores it shares (time-sliced) or None (its own). Its scheduler
    preempts for priority."""

    device: DeviceSpec
    namespace_suffix: str
    cores: SharedCores | None = None
    # The device supervises the Redis the vNPUs share (it alone may restart it).
    ddr_supervised_by_device: bool = False


def scheduler_config(
    settings: Settings, num_blocks: int, preempt_for_priority: bool = False
) -> SchedulerConfig:
    """The scheduler's configuration from `settings` and the HBM pool's `num_blocks` (one
    definition for the server and `tierkv simulate`)."""
    return SchedulerConfig(
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_model_len=settings.max_model_len,
        block_size=settings.block_size,
        preempt_for_priority=preempt_for_priority,
        prefetch_blocks=int(settings.prefetch_fraction * num_blocks),
    )


def build_stack(
    settings: Settings, wakeup: Callable[[], None], vnpu: EngineSlice | None = None
) -> EngineStack:
    """Start tiers and build the engine; `wakeup` is called when a transfer finishes.
    `vnpu`: build one vNPU's engine (None: the whole device's)."""
    step_device = vnpu.device if vnpu is not None else get_device(settings.device)
    layout = kv_layout(settings)
    namespace = layout.namespace + (vnpu.namespace_suffix if vnpu is not None else "")
    num_blocks = hbm_num_blocks(settings)
    # Capacities are given in logical bytes; the manager counts the bytes really stored.
    ddr_stored = int(settings.ddr_bytes * stored_fraction(settings))
    flash_stored = int(settings.flash_bytes * stored_fraction(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    faults = parse_tier_faults(settings.tier_faults)
    # Every tier read and write is charged at the media + host link's modelled cost; with
    # --pace real a transfer's lane waits it out (the real time stands if it is longer).
    clock = transfer_clock(settings)
    with contextlib.ExitStack() as undo:
        events: KVEventPublisher | None = None
        if settings.kv_events_endpoint:
            events = KVEventPublisher(
                settings.kv_events_endpoint,
                settings.kv_events_replay_endpoint,
                settings.block_size,
            )
            undo.callback(events.close)
        tiers = open_lower_tiers(
            settings, layout, namespace, ddr_stored, flash_stored, faults, undo
        )
        ddr, flash, embedded, pool = tiers.ddr, tiers.flash, tiers.embedded_redis, tiers.pool
        manager = (
            CacheManager if pool is None else functools.partial(SharedPoolCacheManager, pool=pool)
        )
        cache = manager(
            layout,
            CacheConfig(
                hbm_num_blocks=num_blocks,
                ddr_capacity_bytes=ddr_stored,
                flash_capacity_bytes=flash_stored,
                eviction_policy=settings.eviction_policy,
                reload_timeout_s=settings.reload_timeout_ms / 1000,
                admission_policy=settings.admission_policy,
            ),
            ddr=ddr,
            flash=flash,
            notify=wakeup,
            on_event=ignore_event if events is None else events.publish,
            charge=functools.partial(_charge_transfer, clock),
        )
        undo.callback(cache.close)
        if tiers.quarantined is not None:
            cache.health[Tier.FLASH].quarantine(tiers.quarantined)
        supervisor = None
        device_supervises = vnpu is not None and vnpu.ddr_supervised_by_device
        url = tiers.redis_url
        if ddr is not None and url is not None and not device_supervises:
            supervisor = RedisSupervisor(url, [cache.health[Tier.DDR]], embedded, wakeup).start()
            undo.callback(supervisor.stop)
        model: StepModel
        tokenizer: Tokenizer
        if settings.emulate is not None:
            cost_config = model_shape(settings)
            model = EmulatedModel(cost_config, settings.kv_bytes_fraction)
            tokenizer = ByteTokenizer()
        else:
            model, tokenizer = load_model(settings)
            cost_config = get_cost_model_config(settings.cost_model or settings.model)
        executor = Executor(
            model,
            cost_config,
            step_device,
            Pace(settings.pace.value),
            cache.pool,  # counted writes: decode contexts stay widened (npu_sim.kv_pool)
            cores=vnpu.cores if vnpu is not None else None,
        )
        scheduler = Scheduler(
            scheduler_config(settings, num_blocks, preempt_for_priority=vnpu is not None),
            cache,
            load_planner(settings, cost_config, clock, step_device),
        )
        undo.pop_all()
    logger.info(
        "tierkv: model %s (device time of %s) on %s, HBM %d blocks x %d tokens "
        "(%.1f MiB KV stored), DDR %s, flash %s",
        settings.served_model,
        cost_config.name,
        settings.device,
        num_blocks,
        settings.block_size,
        num_blocks * layout.block_bytes / 1024**2,
        "off" if ddr is None else (settings.redis_url or "embedded redis"),
        "off" if flash is None else settings.data_dir / "flash",
    )
    return EngineStack(
        EngineCore(scheduler, executor, cache),
        cache,
        layout,
        embedded,
        model.numerics_id,
        tokenizer,
        supervisor=supervisor,
        shutdown_drain_s=settings.shutdown_drain_s,
        transfer_clock=clock,
        events=events,
    )


def load_model(settings: Settings) -> tuple[Model, Tokenizer]:
    """The model and its tokenizer: trained weights (fetched once into model-cache-dir)
    for a weighted preset, seeded random weights and the byte tokenizer otherwise."""
    verify = settings.verify_wide_context
    if is_pretrained(settings.model):
        loaded = load_pretrained(settings.model, settings.model_cache_dir)
        return Model(loaded.config, loaded.weights, verify_wide_context=verify), loaded.tokenizer
    return Model(get_model_config(settings.model), verify_wide_context=verify), ByteTokenizer()
