"""Loads in flight and their deadlines (SGLang HiCache's timeout prefetch policy).

A reload that has not finished `timeout_s` after it was submitted is abandoned: the
request recomputes the tokens that did not arrive. Abandonment goes through the load's
`LoadGuard`, so once `expire()` returns no byte of that load reaches HBM again. A timer
per load calls `notify` at its deadline so that the engine thread wakes up and polls.

Owned by the engine thread (the timers only call `notify`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cache.block_hash import BlockHash
from cache.stats import Tier
from cache.transfer_jobs import LoadGuard, LoadStatus

LoadItems = list[tuple[BlockHash, int, Tier]]  # (hash, HBM block id, source tier)


@dataclass(slots=True)
class _Pending:
    guard: LoadGuard
    items: LoadItems
    deadline: float
    timer: threading.Timer | None


class LoadDeadlines:
    """Tickets of loads in flight; `timeout_s <= 0` means no deadline."""

    def __init__(self, timeout_s: float, notify: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self._notify = notify
        self._pending: dict[int, _Pending] = {}

    def add(self, ticket: int, items: LoadItems, *, now: bool = False) -> LoadGuard:
        """Track a new load; returns the guard its job must carry.

        `now`: the deadline is already due (a source tier is known to be down)."""
        guard = LoadGuard(len(items))
        timer = None
        deadline = float("inf")
        timeout = 0.0 if now else self.timeout_s
        if timeout > 0 or now:
            deadline = time.monotonic() + timeout
            timer = threading.Timer(timeout, self._notify)
            timer.daemon = True
            timer.start()
        self._pending[ticket] = _Pending(guard, items, deadline, timer)
        return guard

    def finish(self, ticket: int) -> bool:
        """The load's result arrived; False if it had been abandoned already."""
        pending = self._pending.pop(ticket, None)
        if pending is None:
            return False
        if pending.timer is not None:
            pending.timer.cancel()
        return True

    def expire(self) -> list[tuple[int, LoadItems, list[LoadStatus]]]:
        """Abandon every load past its deadline: (ticket, items, statuses at abandonment)."""
        now = time.monotonic()
        expired = []
        for ticket in [t for t, p in self._pending.items() if p.deadline <= now]:
            pending = self._pending.pop(ticket)
            expired.append((ticket, pending.items, pending.guard.abandon()))
        return expired

    def cancel_all(self) -> None:
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
