"""Opens the server's lower tiers from `Settings`: flash (LMDB), DDR (Redis) and their pool.

The seam in `server.stack`: everything between the settings and two `StorageTier`s the
cache manager is built over, and nothing of the manager, model or engine. That is the
flash environment (a damaged one quarantined, `open_flash`), the DDR's Redis (embedded
and sized here, `redis_maxmemory`, or an external one checked for `noeviction`), the
shared DDR pool and shared flash of `--ddr-pool shared` / `--flash-pool shared`, and the
fault-injecting wrappers of `--tier-faults`. `server.stack.build_stack` calls
`open_lower_tiers` and builds the rest on its result.

Blocking (spawns Redis, opens LMDB): start-up only, off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import redis

from cache.block_format import encoded_size
from cache.embedded_redis import EmbeddedRedis
from cache.layout import KVLayout
from cache.pool import PoolConfig, SharedPool
from cache.tiers.base import StorageTier, TierError
from cache.tiers.faulty import FaultSpec, FaultyTier
from cache.tiers.lmdb_check import check_environment, move_aside
from cache.tiers.lmdb_tier import META_DIR, LmdbTier
from cache.tiers.pooled_redis_tier import PooledRedisTier
from cache.tiers.redis_tier import RedisTier, connect_redis
from cache.tiers.shared_flash import SharedFlashTier
from server.config import DdrPool, FlashPool, Settings

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


@dataclass(slots=True)
class LowerTiers:
    """What `open_lower_tiers` opened (None: that part is off)."""

    ddr: StorageTier | None
    flash: StorageTier | None
    embedded_redis: EmbeddedRedis | None
    redis_url: str | None  # DDR's Redis, embedded or external
    pool: SharedPool | None  # with --ddr-pool shared
    quarantined: str | None  # why a damaged flash was moved aside at start-up


def open_lower_tiers(
    settings: Settings,
    layout: KVLayout,
    namespace: str,
    ddr_stored: int,
    flash_stored: int,
    faults: dict[str, FaultSpec],
    undo: contextlib.ExitStack,
) -> LowerTiers:
    """Open flash, then DDR, with `ddr_stored` / `flash_stored` bytes as stored (0: off)
    and `faults` (`parse_tier_faults`) injected. Everything opened is registered on
    `undo`, which closes it if start-up fails later."""
    embedded: EmbeddedRedis | None = None
    ddr: StorageTier | None = None
    flash: StorageTier | None = None
    quarantined: str | None = None
    url: str | None = None
    pool: SharedPool | None = None
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
    return LowerTiers(ddr, flash, embedded, url, pool, quarantined)


def redis_maxmemory(stored_bytes: int) -> int:
    """The embedded Redis's maxmemory for a DDR quota of `stored_bytes` (bytes as stored,
    see `server.stack.stored_fraction`): the quota with `REDIS_MEMORY_HEADROOM`, at least
    the floor."""
    return max(int(stored_bytes * REDIS_MEMORY_HEADROOM), REDIS_MEMORY_FLOOR)


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
