"""Prefill/decode disaggregation through the shared DDR pool (`--role`).

After UCM's storage-separated PD and Mooncake: replicas hand KV over through the store,
not over a device link. The router (server/router/) sends a request first to a prefill
replica with `max_tokens` 1, then, unchanged, to a decode replica.

* `prefill`: once a request finishes, its prompt's full blocks are written through to
  DDR (`CacheManager.store_through`) and the response waits until DDR's transfer lane
  has run the writes (at most `HANDOFF_TIMEOUT_S`), so the decode replica, called after
  the response, finds them.
* `decode`: before a request is admitted, its prompt's leading blocks are looked up in
  the shared Redis (`cache.pool_handoff.find_shared_prefix`, on this module's own
  connection and thread)
  and added to the DDR index (`CacheManager.adopt`); the scheduler then reloads them as
  any DDR hit and computes only the rest (at least the last prompt token, which samples
  the first output token: tokens are those of a single replica).
* `both`: neither.

Failures degrade to recompute, never to wrong tokens or a hung request: a write that
fails or times out, a Redis that is down, a block evicted in between all show up on the
decode side as missing blocks, which it computes itself.

Meeting point with a live shared pool: `find_shared_prefix` is the one lookup. When the
manager's own index follows the pool live, the decode role needs no lookup at all.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter, Histogram

from cache.block_hash import BlockHash, hash_full_blocks
from cache.pool_handoff import find_shared_prefix
from cache.stats import Tier
from cache.tiers.base import TierError
from cache.tiers.redis_tier import RedisTier, connect_redis
from server.config import Role
from server.engine.async_engine import AsyncEngine
from server.engine.request import EngineRequest

logger = logging.getLogger(__name__)

HANDOFF_TIMEOUT_S = 5.0
"""Longest a prefill response waits for its blocks to reach DDR; past it the decode
replica recomputes what is missing."""


class PrefillDecode:
    """The role-specific steps around one request; called on the event loop."""

    def __init__(
        self,
        role: Role,
        engine: AsyncEngine,
        block_size: int,
        registry: CollectorRegistry,
        redis_url: str | None = None,
        namespace: str = "",
    ) -> None:
        """`redis_url` and `namespace`: the DDR pool's, needed for the decode role."""
        self.role = role
        self._engine = engine
        self._block_size = block_size
        self._store: RedisTier | None = None
        self._thread: ThreadPoolExecutor | None = None
        if role is Role.DECODE:
            if redis_url is None:
                raise ValueError("the decode role needs the DDR pool's Redis URL")
            # Own connection and thread: a tier is used by one thread at a time.
            self._store = RedisTier(connect_redis(redis_url), namespace)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="tierkv-pool-lookup")
        self.blocks_handed_over = Counter(
            "tierkv:pd_blocks_handed_over",
            "Prompt blocks of hand-overs whose DDR writes finished in time (blocks DDR "
            "already held count too; a write refused by a full pool does not show here).",
            registry=registry,
        )
        self.blocks_found = Counter(
            "tierkv:pd_blocks_found",
            "Prompt blocks a decode replica found in the shared DDR pool (with "
            "--ddr-pool shared its live index often has them first; they count too).",
            registry=registry,
        )
        self.handoff_seconds = Histogram(
            "tierkv:pd_handoff_seconds",
            "Time a prefill response waited for its blocks to reach DDR.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )

    def _prompt_hashes(self, request: EngineRequest) -> list[BlockHash]:
        return hash_full_blocks(request.prompt_token_ids, self._block_size, request.root_hash)

    async def before_admit(self, request: EngineRequest) -> None:
        """Decode role: index the prompt's leading blocks the shared pool holds."""
        if self._store is None or self._thread is None:
            return
        hashes = self._prompt_hashes(request)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(
                self._thread, find_shared_prefix, self._store, hashes
            )
        except TierError as exc:
            logger.warning("shared pool lookup failed (%s); the request recomputes", exc)
            return
        if found:
            indexed = await self._engine.call(lambda core: core.cache.adopt(Tier.DDR, found))
            self.blocks_found.inc(indexed)

    async def after_finish(self, request: EngineRequest) -> None:
        """Prefill role: write the prompt's blocks through to DDR and wait for it."""
        if self.role is not Role.PREFILL:
            return
        hashes = self._prompt_hashes(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        done = await self._engine.call(lambda core: core.cache.store_through(hashes))
        if done is None:
            logger.warning("DDR is off or down: decode replicas will recompute this prompt")
            return
        finished = await asyncio.to_thread(done.wait, HANDOFF_TIMEOUT_S)
        self.handoff_seconds.observe(loop.time() - started)
        if not finished:
            logger.warning("DDR writes not done in %.1f s; decode may recompute", HANDOFF_TIMEOUT_S)
            return
        self.blocks_handed_over.inc(len(hashes))

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._store is not None:
            self._store.close()
