"""Prefetch for queued requests (`--prefetch-fraction`; SGLang HiCache's and LMCache's
prefetch): the lower-tier prefix of a request still waiting is loaded into HBM while it
waits, so it runs from HBM hits once admitted.

The `Scheduler` owns one `Prefetcher` and calls it at fixed points of its step (after
admission; when HBM runs short; when a request leaves the queue or its load lands); it
writes only the prefetch fields of the requests it is handed (`prefetch_block_ids`,
`prefetch_num_hbm_blocks`, `is_prefetching`, `prefetch_tried`). Engine thread only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

from cache.manager import CacheManager
from cache.records import PrefixHit
from server.engine.request import EngineRequest

PREFETCH_SCAN = 64
"""How many queued requests a step considers for prefetch (each costs a prefix match)."""


class Prefetcher:
    """Starts, hands back and lands prefetches, holding at most `max_blocks` HBM blocks
    for them at any time (0: prefetch is off)."""

    def __init__(self, cache: CacheManager, max_blocks: int) -> None:
        self.cache = cache
        self.max_blocks = max_blocks
        self.num_prefetched_blocks = 0  # lower-tier blocks prefetches started loading

    @property
    def is_on(self) -> bool:
        return self.max_blocks > 0

    def start(
        self,
        waiting: Iterable[EngineRequest],
        live: Iterable[EngineRequest],
        match: Callable[[EngineRequest], PrefixHit],
    ) -> None:
        """Start loading the lower-tier prefix of requests in `waiting` (queue order).

        Runs after admission, so every request still waiting was not admitted (no room
        in the batch or in HBM). In queue order, the first `PREFETCH_SCAN` of them, while
        the prefetches of `live` requests hold at most `max_blocks` HBM blocks; a prefix
        (`match`: the prefix admission would use) that does not fit the rest of that
        budget is cut. The load is the same as an admission's (deadline, abandonment,
        `poll` as the only exit); its landed blocks are held for the request until it is
        admitted (they are HBM hits then), aborted, or HBM runs short (`release_newest`).
        """
        held = sum(len(r.prefetch_block_ids) for r in live)
        room = self.max_blocks - held
        for request in itertools.islice(waiting, PREFETCH_SCAN):  # no copy of the queue
            if room <= 0:
                return
            if request.prefetch_tried:
                continue  # one look per wait: a cut or abandoned prefetch is not retried
            hit = match(request)
            if not hit.lower:
                request.prefetch_tried = True  # nothing below HBM: no match every step
                continue
            hit = PrefixHit(hit.hbm_block_ids, hit.lower[: room - len(hit.hbm_block_ids)])
            if len(hit.hbm_block_ids) >= room or not hit.lower:
                continue
            taken = self.cache.prefetch(hit, request.request_id)
            if taken is None:
                return  # HBM is full: nothing else fits either
            request.prefetch_block_ids = taken.block_ids
            request.prefetch_num_hbm_blocks = taken.num_hbm_blocks
            request.is_prefetching = request.prefetch_tried = True
            room -= len(taken.block_ids)
            self.num_prefetched_blocks += taken.num_loading_blocks

    def land(self, request: EngineRequest, num_loaded_blocks: int) -> None:
        """`request`'s prefetch landed with its first `num_loaded_blocks` lower-tier blocks
        intact: keep those (and its HBM hits) held, free the rest."""
        keep = request.prefetch_num_hbm_blocks + num_loaded_blocks
        self.cache.free(request.prefetch_block_ids[keep:])
        del request.prefetch_block_ids[keep:]
        request.is_prefetching = False

    def drop(self, request: EngineRequest) -> None:
        """Let go of the blocks a prefetch holds for `request` (cancelling it if in flight)."""
        if request.is_prefetching:
            self.cache.cancel_load(request.request_id, request.prefetch_block_ids)
        elif request.prefetch_block_ids:
            self.cache.release_prefetch(request.request_id, request.prefetch_block_ids)
        request.prefetch_block_ids = []
        request.is_prefetching = False

    def release_newest(self, waiting: Sequence[EngineRequest]) -> bool:
        """Hand back the newest landed prefetch's hold in `waiting`: HBM ran short for a
        running request or for the head of the queue (a prefetch never takes blocks they
        need, nor holds the queue up). False if there is none."""
        if not self.is_on:
            return False  # no request holds any (saves a queue walk)
        for request in reversed(waiting):
            if request.prefetch_block_ids and not request.is_prefetching:
                self.drop(request)
                return True
        return False
