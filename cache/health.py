"""Per-tier health: what the manager, the transfer thread and the Redis supervisor know.

One `TierHealth` per lower tier. Several threads write it (the engine thread counts
failed operations, the supervisor marks Redis down and up), so it is the one piece of
cache state with a lock; the manager copies `state()` into `TierStats` for readers.

States (see `cache.stats.HEALTH_STATES`):
  * down: the supervisor's probe fails (Redis dead or unreachable);
  * quarantined: the store was damaged at start-up and moved aside; a fresh, empty one
    serves (sticky until restart);
  * degraded: an operation failed or a reload timed out in the last `DEGRADED_WINDOW_S`;
  * ok otherwise.
"""

from __future__ import annotations

import threading
import time

DEGRADED_WINDOW_S = 30.0


class TierHealth:
    """Thread-safe health of one tier."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._quarantine = ""
        self._down = ""
        self._last_error = ""
        self._last_error_at = float("-inf")
        self._restarts = 0
        self._restarts_seen = 0

    def quarantine(self, detail: str) -> None:
        with self._lock:
            self._quarantine = detail

    def mark_down(self, detail: str) -> None:
        with self._lock:
            self._down = detail or "down"

    def mark_up(self, *, restarted: bool) -> None:
        """The store answers again; `restarted`: it came back empty (volatile Redis)."""
        with self._lock:
            self._down = ""
            if restarted:
                self._restarts += 1

    def record_error(self, detail: str) -> None:
        with self._lock:
            self._last_error = detail
            self._last_error_at = time.monotonic()

    @property
    def is_down(self) -> bool:
        with self._lock:
            return bool(self._down)

    def take_restarts(self) -> int:
        """Restarts since the last call (the manager clears its index once per restart)."""
        with self._lock:
            new = self._restarts - self._restarts_seen
            self._restarts_seen = self._restarts
            return new

    def state(self) -> tuple[str, str]:
        """(health, detail) as of now."""
        with self._lock:
            if self._down:
                return "down", self._down
            if self._quarantine:
                return "quarantined", self._quarantine
            if time.monotonic() - self._last_error_at < DEGRADED_WINDOW_S:
                return "degraded", f"recent failure: {self._last_error}"
            return "ok", ""
