"""Supervision of the DDR Redis: detect death or a stall, restart, report health.

One daemon thread per server PINGs the DDR Redis on its own connection (never the
transfer thread's), every `interval_s` while it answers:

  * no answer: the tier is marked down (spills go to flash, see `CacheManager`) and
    probed again with exponential backoff from `interval_s` up to `max_backoff_s`;
  * the embedded redis-server exited: it is restarted with the same backoff. It comes
    back empty (it is volatile), so the tier is marked up with `restarted=True` and the
    manager clears its DDR index;
  * an external Redis answers again: marked up. A plain Redis whose `run_id` changed
    since the last probe restarted, empty: marked up with `restarted=True` (even if no
    probe saw it down), so the manager clears its DDR index; a Cluster's lost entries
    are repaired as loads miss them.

With the defaults, DDR is back in use at most `max_backoff_s` (2 s) plus one engine
loop pass after Redis answers again. Transitions are logged and call `notify` (wakes
the engine thread, which applies them in `CacheManager.poll`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis

from cache.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from cache.health import TierHealth
from cache.tiers.redis_tier import connect_redis

logger = logging.getLogger(__name__)


class RedisSupervisor:
    """Watches one Redis (`url`), restarting `embedded` when its process dies.

    `healths`: the DDR health of every engine using this Redis (one, or one per vNPU of
    a partitioned device, whose shared Redis only this supervisor may restart)."""

    def __init__(
        self,
        url: str,
        healths: Sequence[TierHealth],
        embedded: EmbeddedRedis | None = None,
        notify: Callable[[], None] = lambda: None,
        interval_s: float = 0.5,
        max_backoff_s: float = 2.0,
        probe_timeout_s: float = 1.0,
    ) -> None:
        self._url = url
        self._healths = tuple(healths)
        self._embedded = embedded
        self._notify = notify
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._probe_timeout_s = probe_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tierkv-redis-supervisor", daemon=True
        )
        self.num_restarts = 0
        self.run_id: str | None = None  # the plain Redis's run_id at the last probe

    def start(self) -> RedisSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising (before the Redis it watches is stopped). Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        client = connect_redis(
            self._url,
            socket_timeout=self._probe_timeout_s,
            socket_connect_timeout=self._probe_timeout_s,
        )
        delay = self._interval_s
        try:
            while not self._stop.wait(delay):
                if self._check(client):
                    delay = self._interval_s
                else:
                    delay = min(delay * 2, self._max_backoff_s)
        finally:
            client.close()

    def _check(self, client: redis.Redis | redis.RedisCluster) -> bool:
        """One probe; True when Redis answered."""
        embedded = self._embedded
        if embedded is not None and not embedded.is_running:
            if not self._is_down:
                logger.error("embedded redis-server exited; restarting it")
                self._mark_down("embedded redis-server exited")
            try:
                embedded.restart()
            except (EmbeddedRedisError, OSError) as exc:
                logger.error("restarting the embedded redis-server failed: %s", exc)
                return False
            self.num_restarts += 1
            self.run_id = None  # a new process: its run_id is not news
            logger.warning("embedded redis-server restarted (empty); DDR back in use")
            self._mark_up(restarted=True)
            return True
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            if not self._is_down:
                logger.error("DDR Redis not answering (%s); spilling to flash meanwhile", exc)
                self._mark_down(f"redis not answering: {exc}")
            return False
        restarted = self._restarted_since_last_probe(client)
        if restarted:
            logger.warning("DDR Redis restarted (new run_id): what it held is gone")
        if self._is_down or restarted:
            logger.warning("DDR Redis answers again; back in use")
            self._mark_up(restarted=restarted)
        return True

    def _restarted_since_last_probe(self, client: redis.Redis | redis.RedisCluster) -> bool:
        """Whether a plain Redis's run_id changed since the last probe: it restarted,
        empty (a Cluster's nodes are not followed: entries it lost are repaired as loads
        miss them)."""
        if not isinstance(client, redis.Redis):
            return False
        try:
            run_id = str(client.info("server").get("run_id", ""))
        except (redis.RedisError, OSError):
            return False
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        return restarted

    @property
    def _is_down(self) -> bool:
        return any(health.is_down for health in self._healths)

    def _mark_down(self, detail: str) -> None:
        for health in self._healths:
            health.mark_down(detail)
        self._notify()

    def _mark_up(self, *, restarted: bool) -> None:
        for health in self._healths:
            health.mark_up(restarted=restarted)
        self._notify()
