"""Follow one publisher's KV events (cache.events) and keep its per-tier block index.

`KVEventSubscriber` runs one thread that owns a SUB socket and, if the publisher has a
replay endpoint, a DEALER for replay. It first asks for a replay from sequence 0 (so a
late joiner starts from the publisher's whole history, or its snapshot), then applies
live batches in sequence order, skipping those it already has and filling gaps by
replay. ZeroMQ drops what a SUB socket is sent before its subscription reaches the
publisher (the "slow joiner", also after a publisher restarts), and a lost batch with no
batch after it reveals no gap, so every `CATCH_UP_S` the thread also asks for a replay
of the batches after its last one (one small request; the answer is empty when nothing
was missed). A replay ends with the publisher's epoch: a new epoch is a restarted
publisher, whose batch numbers start again at 0, so the index starts over from a replay
from 0. So does a live batch numbered 0 that starts with `AllBlocksCleared`.

Readers on other threads use `prefix_tiers` / `counts` (under a lock) or `wait_for`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from cache.block_hash import BlockHash
from cache.events import END_SEQ, AllBlocksCleared, EventIndex, decode_batch
from cache.stats import Tier

logger = logging.getLogger(__name__)


class KVEventSubscriber:
    """The block index of one publisher, kept up to date by a thread."""

    POLL_MS = 50
    REPLAY_TIMEOUT_MS = 2000
    CATCH_UP_S = 1.0  # this often: ask the replay endpoint what we missed

    def __init__(self, endpoint: str, replay_endpoint: str | None, topic: str = "") -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self._topic = topic.encode("utf-8")
        self._index = EventIndex()
        self._lock = threading.Condition()
        self._last_seq = -1
        self._synced = replay_endpoint is None  # replayed the history at least once
        self._epoch: bytes | None = None  # the publisher's, from the last replay's end
        self._stop = threading.Event()
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._thread = threading.Thread(target=self._run, name="kv-events-sub", daemon=True)
        self._thread.start()

    # -- readers (any thread) ------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def counts(self) -> dict[Tier, int]:
        with self._lock:
            return self._index.counts()

    def prefix_tiers(self, hashes: Sequence[BlockHash]) -> list[Tier]:
        """The fastest tier holding each leading block of `hashes`, up to the first miss."""
        tiers: list[Tier] = []
        with self._lock:
            for block_hash in hashes:
                tier = next((t for t in Tier if block_hash in self._index.blocks[t]), None)
                if tier is None:
                    break
                tiers.append(tier)
        return tiers

    def wait_for(self, predicate: Callable[[EventIndex], bool], timeout: float) -> bool:
        """Block until `predicate(index)` holds (checked after each batch) or `timeout`."""
        with self._lock:
            return self._lock.wait_for(lambda: self._synced and predicate(self._index), timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self._topic)
        sub.connect(self.endpoint)
        dealer: zmq.Socket[bytes] | None = None
        caught_up = time.monotonic()  # when the last replay was asked for
        try:
            while not self._stop.is_set():
                if not self._synced and self.replay_endpoint is not None:
                    dealer = self._replay(dealer, 0)
                    if not self._synced:
                        self._stop.wait(0.2)
                        continue
                    caught_up = time.monotonic()
                if self.replay_endpoint is not None and (
                    time.monotonic() - caught_up >= self.CATCH_UP_S
                ):
                    dealer = self._replay(dealer, self._last_seq + 1)
                    caught_up = time.monotonic()
                if not sub.poll(self.POLL_MS):
                    continue
                frames = sub.recv_multipart()
                if len(frames) != 3:
                    continue
                seq = int.from_bytes(frames[1], "big")
                if seq > self._last_seq + 1 and self._last_seq >= 0:
                    if self.replay_endpoint is not None:
                        dealer = self._replay(dealer, self._last_seq + 1)
                    if seq > self._last_seq + 1:
                        logger.warning(
                            "KV events from %s: batches %d..%d lost",
                            self.endpoint,
                            self._last_seq + 1,
                            seq - 1,
                        )
                self._apply(seq, frames[2])
        except Exception:
            logger.exception("KV event subscriber for %s stopped", self.endpoint)
        finally:
            sub.close()
            if dealer is not None:
                dealer.close()

    def _replay(self, dealer: zmq.Socket[bytes] | None, start: int) -> zmq.Socket[bytes] | None:
        """Ask for every batch from `start`; returns the dealer to keep (None: reconnect)."""
        assert self.replay_endpoint is not None
        if dealer is None:
            dealer = self._ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(self.replay_endpoint)
        dealer.send_multipart((b"", start.to_bytes(8, "big")))
        while True:
            if not dealer.poll(self.REPLAY_TIMEOUT_MS):
                dealer.close()  # no answer: a fresh socket next time, no stale replies
                return None
            frames = dealer.recv_multipart()
            if len(frames) != 3:
                continue
            if frames[1] == END_SEQ:
                epoch = bytes(frames[2]) or None  # None: a publisher that sends none
                with self._lock:
                    restarted = None not in (epoch, self._epoch) and epoch != self._epoch
                    self._epoch = epoch or self._epoch
                    if restarted:  # its batches number from 0 again: start over
                        self._index.apply([AllBlocksCleared()])
                        self._last_seq = -1
                    else:
                        self._synced = True
                    self._lock.notify_all()
                if restarted:
                    logger.warning("KV events from %s: publisher restarted", self.endpoint)
                    return self._replay(dealer, 0)
                return dealer
            self._apply(int.from_bytes(frames[1], "big"), frames[2])

    def _apply(self, seq: int, payload: bytes) -> None:
        try:
            _, events = decode_batch(payload)
        except ValueError:
            logger.warning("KV events from %s: undecodable batch %d", self.endpoint, seq)
            return
        restarted = seq == 0 and bool(events) and isinstance(events[0], AllBlocksCleared)
        with self._lock:
            if seq <= self._last_seq and not (restarted and self._last_seq > 0):
                return
            self._index.apply(events)
            self._last_seq = seq
            self._lock.notify_all()
