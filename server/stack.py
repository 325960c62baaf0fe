"""Builds the engine stack from `Settings`: device, model, tiers, cache manager, executor.

Start-up does blocking work (spawning Redis, drawing weights, scanning LMDB), so the
app's lifespan runs `build_stack` in a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from cache.block_format import encoded_size
from cache.embedded_redis import EmbeddedRedis
from cache.events import KVEventPublisher, ignore_event
from cache.layout import KVLayout
from cache.manager import CacheConfig, CacheManager
from cache.pool import PoolConfig, SharedPool
from cache.pooled_manager import SharedPoolCacheManager
from cache.stats import Tier
from cache.supervisor import RedisSupervisor
from cache.tiers.base import StorageTier, TierError
from cache.tiers.faulty import FaultyTier, parse_tier_faults
from cache.tiers.lmdb_check import check_environment, move_aside
from cache.tiers.lmdb_tier import META_DIR, LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from cache.tiers.shared_flash import SharedFlashTier
from npu_sim.arbiter import SharedCores
from npu_sim.device import DeviceSpec, get_device
from npu_sim.emulated import EmulatedModel, stored_head_dim
from npu_sim.executor import Executor, Pace, StepModel
from npu_sim.links import TierPaths, TransferClock, get_media
from npu_sim.model import Model
from npu_sim.model_config import ModelConfig, get_cost_model_config, get_model_config
from npu_sim.pretrained import is_pretrained, load_pretrained
from npu_sim.tokenizers import ByteTokenizer, Tokenizer
from server.config import GB, DdrPool, FlashPool, LoadPolicy, Settings
from server.engine.core import EngineCore
from server.engine.load_planner import LoadPlanner
from server.engine.scheduler import Scheduler, SchedulerConfig

logger = logging.getLogger(__name__)

# The embedded Redis's maxmemory is sized here, and only here (`redis_maxmemory`): Redis
# needs room beyond the payload bytes the manager counts (keys, allocator slack, the
# shared pool's books). Measured: 2,000 blocks of 16-360 KiB took 1.003-1.011x their
# payload in used_memory, 3,000 16 KiB blocks through the shared pool 1.021x, so 1.25 is
# ample; the floor covers Redis's own base memory.
REDIS_MEMORY_HEADROOM = 1.25
REDIS_MEMORY_FLOOR = 64 * 1024**2
# LMDB's map is address space, not disk: leave room for page overhead of large values.
LMDB_MAP_HEADROOM = 1.5
LMDB_MAP_FLOOR = 64 * 1024**2


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


def redis_maxmemory(stored_bytes: int) -> int:
    """The embedded Redis's maxmemory for a DDR quota of `stored_bytes` (bytes as stored,
    see `stored_fraction`): the quota with `REDIS_MEMORY_HEADROOM`, at least the floor."""
    return max(int(stored_bytes * REDIS_MEMORY_HEADROOM), REDIS_MEMORY_FLOOR)


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
    embedded: EmbeddedRedis | None = None
    ddr: StorageTier | None = None
    flash: StorageTier | None = None
    quarantined: str | None = None
    url: str | None = None
    pool: SharedPool | None = None
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
        # Flash first: a damaged LMDB file must be caught before anything else (a Redis
        # child) is started, and is quarantined rather than taking the server down.
        if settings.flash_bytes > 0:
            map_size = max(int(flash_stored * LMDB_MAP_HEADROOM), LMDB_MAP_FLOOR)
            flash, quarantined = open_flash(settings.data_dir / "flash", map_size, namespace)
            undo.callback(flash.close)
        if settings.ddr_bytes > 0:
            url = settings.redis_url
            if url is None:
                embedded = EmbeddedRedis(settings.data_dir, redis_maxmemory(ddr_stored)).start()
                undo.callback(embedded.stop)
                url = embedded.url
            else:
                warn_unless_noeviction(url)
            if settings.ddr_pool is DdrPool.SHARED:
                config = PoolConfig(capacity_bytes=ddr_stored)
                pool = SharedPool(connect_redis(url), namespace, config)
                undo.callback(pool.stop)  # idempotent: cache.close() stops it again
                ddr = PooledRedisTier(connect_redis(url), namespace, pool)
                if isinstance(flash, LmdbTier) and settings.flash_pool is FlashPool.SHARED:
                    block = encoded_size(layout.block_shape, layout.np_dtype)
                    flash = SharedFlashTier.share(flash, pool, connect_redis(url), map_size, block)
                    undo.callback(flash.close)  # idempotent
            else:
                ddr = RedisTier(connect_redis(url), namespace)
            undo.callback(ddr.close)  # idempotent: cache.close() closes it again
        if ddr is not None and "ddr" in faults:
            ddr = FaultyTier(ddr, faults["ddr"], settings.tier_faults_seed)
        if flash is not None and "flash" in faults:
            flash = FaultyTier(flash, faults["flash"], settings.tier_faults_seed)
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
        if quarantined is not None:
            cache.health[Tier.FLASH].quarantine(quarantined)
        supervisor = None
        device_supervises = vnpu is not None and vnpu.ddr_supervised_by_device
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


def open_flash(path: Path, map_size: int, namespace: str) -> tuple[LmdbTier, str | None]:
    """Open the flash tier; a damaged one is moved aside and a fresh one opened.

    Returns the tier and, when it had to be quarantined, why (for health and the log).
    """
    problem = check_environment(path) or check_environment(path / META_DIR)
    if problem is None:
        try:
            return LmdbTier(path, map_size, namespace), None
        except TierError as exc:  # e.g. MDB_INVALID, MDB_VERSION_MISMATCH
            problem = str(exc)
    aside = move_aside(path)
    detail = f"{problem}; moved to {aside}, started empty"
    logger.error("flash tier quarantined: %s", detail)
    return LmdbTier(path, map_size, namespace), detail


def warn_unless_noeviction(url: str) -> None:
    """An external Redis that evicts on its own drops blocks behind the index's back."""
    client = connect_redis(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        reply = client.config_get("maxmemory-policy")
        policies = {v for k, v in reply.items() if k in (b"maxmemory-policy", "maxmemory-policy")}
        policy = next(iter(policies), b"?")
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
        if policy != "noeviction":
            logger.warning(
                "external Redis %s has maxmemory-policy %s, not noeviction: it may evict "
                "blocks the index still lists (counted in tierkv:tier_index_repairs_total)",
                url,
                policy,
            )
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not read maxmemory-policy of %s: %s", url, exc)
    finally:
        client.close()
