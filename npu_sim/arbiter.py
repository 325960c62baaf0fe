"""Device-level arbiter of vNPU steps on the modelled clock.

A `CoreGroup` is a set of AI cores that runs one step at a time. Members (vNPUs) submit
a step (`submit(member, ready_at, seconds)`: its modelled duration on the group's cores)
and the group grants *turns* in modelled time:

* `quantum=None`: a granted step runs to its end (FIFO by submission among the members
  that are ready). One member alone: a hard slice (its own cores, nobody waits). Several
  members: an unpartitioned device shared by several engines, whose steps queue on it.
* `quantum=q`: time slicing. Turns last at most `q` (vir01: 1 ms) and go round-robin to
  the members with a step pending; a step ends with its last turn.

`preempt(member, at)` cuts the member's current turn at `at` (the caller picks a kernel
boundary): the step is dropped unfinished and the group is free from `at` on.

The group is a pure state machine on the modelled clock: it never sleeps or reads a
clock. A driver (the vNPU benchmark, `server.vnpu.bench`) asks `next_start()` for the
earliest time a turn could start, and calls `grant()` once its own clock has reached it
(after handling every event up to that time, so a submission at an earlier time is never
missed). One thread at a time.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class _Pending:
    ready_at: float
    remaining: float


@dataclass(frozen=True, slots=True)
class Turn:
    """One grant: `member` runs on the group's cores from `start` to `end`; `finishes_step`
    says whether its step is then done."""

    member: str
    start: float
    end: float
    finishes_step: bool


class CoreGroup:
    """AI cores shared by `members` in turns (see module doc)."""

    def __init__(self, name: str, quantum: float | None = None) -> None:
        if quantum is not None and quantum <= 0:
            raise ValueError(f"core group {name!r}: quantum must be > 0 (or None)")
        self.name = name
        self.quantum = quantum
        self.free_at = 0.0  # the cores are busy until then
        self.busy_seconds: dict[str, float] = {}  # per member: modelled time on the cores
        self.current: Turn | None = None  # the last grant (running while end > now)
        self._pending: dict[str, _Pending] = {}
        self._order: deque[str] = deque()  # round-robin (and FIFO) order

    def has_pending(self, member: str) -> bool:
        return member in self._pending

    def submit(self, member: str, ready_at: float, seconds: float) -> None:
        """Queue `member`'s next step, ready at `ready_at`, needing `seconds` of the cores.

        One step per member at a time (`ValueError` otherwise); a 0-second step is allowed
        and is granted as an empty turn.
        """
        if member in self._pending:
            raise ValueError(f"{member!r} already has a step pending on {self.name!r}")
        if seconds < 0:
            raise ValueError("a step cannot take negative time")
        self._pending[member] = _Pending(ready_at, seconds)
        self.busy_seconds.setdefault(member, 0.0)
        self._order.append(member)

    def next_start(self) -> float | None:
        """When the next turn would start (None: nothing pending)."""
        if not self._pending:
            return None
        earliest = min(p.ready_at for p in self._pending.values())
        return max(self.free_at, earliest)

    def grant(self) -> Turn:
        """Grant the next turn (call when the modelled clock is at `next_start()`)."""
        start = self.next_start()
        if start is None:
            raise ValueError(f"nothing pending on {self.name!r}")
        for _ in range(len(self._order)):
            member = self._order.popleft()
            pending = self._pending[member]
            if pending.ready_at <= start:
                break
            self._order.append(member)  # not ready yet: keep its place in the rotation
        else:  # pragma: no cover - next_start guarantees a ready member
            raise AssertionError("no ready member")
        length = pending.remaining
        if self.quantum is not None:
            length = min(length, self.quantum)
        pending.remaining -= length
        done = pending.remaining <= 1e-15
        if done:
            del self._pending[member]
        else:
            self._order.append(member)  # round-robin: to the back of the line
        self.free_at = start + length
        self.busy_seconds[member] += length
        self.current = Turn(member, start, start + length, done)
        return self.current

    def preempt(self, member: str, at: float) -> float:
        """Drop `member`'s step: its running turn (if any) stops at `at`, its pending
        turns are forgotten. Returns the modelled time the cores are free again."""
        turn = self.current
        if turn is not None and turn.member == member and turn.start <= at < turn.end:
            self.busy_seconds[member] -= turn.end - at
            self.free_at = at
            self.current = Turn(member, turn.start, at, finishes_step=False)
        if self._pending.pop(member, None) is not None:
            self._order.remove(member)
        return self.free_at


class SharedCores:
    """The live server's counterpart of a shared `CoreGroup`: the executors of the vNPUs
    that share these cores (time-sliced ones) reserve device time here and, with
    `--pace real`, wait for it, so their steps never overlap on the modelled clock.

    Granularity is the whole step, FIFO by reservation: a reservation is made when the
    step is issued, before a later neighbour's step is known, so the 1 ms round-robin
    turns of `CoreGroup` cannot be laid out in advance (the modelled driver,
    `server.vnpu.sim`, does lay them out). Thread-safe.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._free_at = 0.0
        self._lock = threading.Lock()

    def reserve(self, now: float, seconds: float) -> float:
        """Book `seconds` of the cores from `now` or when they are free; return the end."""
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + seconds
            return self._free_at
