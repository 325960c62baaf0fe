"""How much KV-load time the NPU spent idle, waiting (issue #10's overlap figure).

A load is hidden when the device has other work while it runs (decodes, other prefills)
and exposed when the device sits idle with a load in flight: then the load is what the
requests wait for. `TransferOverlap` integrates both over time from observations the
engine makes at every plan (busy if it scheduled anything) and every poll (idle if the
engine has no schedulable work, else unchanged), so host time between steps is not
counted as waiting:

    hidden fraction = 1 - exposed_seconds / inflight_seconds

`inflight_seconds` counts time with at least one load in flight once, however many run
in parallel (the lanes of both tiers, several requests). Each observation's state holds
until the next one. The clock is the engine's (`time.perf_counter` by default: with
`--pace real` steps and transfers last their modelled time, so this is the modelled
clock as far as the host keeps up). Engine thread only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TransferOverlap:
    """Time with loads in flight, and the part of it the device spent idle."""

    inflight_seconds: float = 0.0
    exposed_seconds: float = 0.0
    _since: float | None = None
    _loading: bool = False
    _busy: bool = False

    def observe(self, now: float, *, loading: bool, busy: bool | None) -> None:
        """From `now` on, loads are (`loading`) or are not in flight, and the device is
        (`busy`) or is not running steps (None: as before)."""
        if self._since is not None and self._loading:
            elapsed = max(0.0, now - self._since)
            self.inflight_seconds += elapsed
            if not self._busy:
                self.exposed_seconds += elapsed
        self._since, self._loading = now, loading
        if busy is not None:
            self._busy = busy

    @property
    def hidden_fraction(self) -> float | None:
        """1 - exposed / in flight (None before any load)."""
        if self.inflight_seconds <= 0:
            return None
        return 1.0 - self.exposed_seconds / self.inflight_seconds
