"""An optional model of the live server's front end for the simulator (default off).

The live server does host work before a request reaches the engine: the HTTP request is
read and parsed, the prompt tokenized and the engine request built, one request at a time
on the event loop. Requests that arrive at the same instant (the Mooncake trace's
timestamps come in whole seconds, so 3-16 requests share one) therefore reach the engine
spread over some milliseconds and in the order the event loop takes their sockets, which
is not the client's order. The engine starts a step with the first of them. None of that
is device time, so `tierkv simulate` leaves it out unless asked.

`FrontEndModel` charges each request `seconds_per_request + seconds_per_token x prompt
tokens` on one FIFO front end (the event loop), and can take same-instant arrivals in a
seeded random order. Its parameters are host measurements, valid for the machine and
load they were measured on; see README "Simulator" for how the defaults were measured.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrontEndModel:
    """Host time before a request reaches the engine (all zero / None: off).

    seconds_per_request, seconds_per_token: the front end's service time for a request
        of n prompt tokens is `seconds_per_request + seconds_per_token * n`; requests
        are served one at a time in the order they reached it.
    tie_order_seed: same-instant arrivals reach the front end in an order drawn with
        this seed (None: in submission order, as the client lists them).
    """

    seconds_per_request: float = 0.0
    seconds_per_token: float = 0.0
    tie_order_seed: int | None = None

    def __post_init__(self) -> None:
        if self.seconds_per_request < 0 or self.seconds_per_token < 0:
            raise ValueError("front-end service times must be >= 0")

    @property
    def has_service_time(self) -> bool:
        return self.seconds_per_request > 0 or self.seconds_per_token > 0

    def service_seconds(self, num_prompt_tokens: int) -> float:
        return self.seconds_per_request + self.seconds_per_token * num_prompt_tokens

    def tie_breakers(self) -> Iterator[float]:
        """Keys that order same-instant arrivals: increasing, or seeded random."""
        if self.tie_order_seed is None:
            return (float(i) for i in itertools.count())
        rng = random.Random(self.tie_order_seed)
        return iter(rng.random, None)


class FrontEnd:
    """The FIFO front end on the virtual clock: `enter` a request at its arrival, get
    the virtual time it reaches the engine. Not thread-safe."""

    def __init__(self, model: FrontEndModel) -> None:
        self.model = model
        self._free_at = 0.0

    def enter(self, arrival_s: float, num_prompt_tokens: int) -> float:
        """Call in arrival order. Returns when the request is handed to the engine."""
        start = max(arrival_s, self._free_at)
        self._free_at = start + self.model.service_seconds(num_prompt_tokens)
        return self._free_at
