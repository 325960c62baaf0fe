"""KV events: which blocks each tier holds, published in vLLM's KV-events wire format.

The cache manager reports every change of its HBM prefix cache and of its DDR and flash
indexes as a `KVEvent` (an `on_event` callback, called on the engine thread). A
`KVEventPublisher` queues them and a publisher thread sends them, so the engine thread
never waits on a socket. A `KVEventSubscriber` (the router, a test, any vLLM-events
consumer) rebuilds the exact per-tier index from the stream.

Wire format (vllm/distributed/kv_events.py, consumed by llm-d-kv-cache-manager and
Dynamo): a ZMQ PUB socket sends three frames per batch, `(topic, seq, payload)`, where
`seq` is an 8-byte big-endian sequence number counting from 0 and `payload` is msgpack
of the array `[ts, [event, ...]]` (vLLM's `EventBatch`, msgspec `array_like`; the
optional `data_parallel_rank` is omitted). Events are tagged arrays:

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

`block_hashes` are tierkv's 16-byte block hashes as msgpack bin (vLLM's
`ExternalBlockHash` is bytes or int). `medium` is the tier: "hbm", "ddr" or "flash".
vLLM says "GPU" for its device pool and "CPU" for CPU offload; tierkv's "hbm" is the
device pool ("GPU"), "ddr" is host memory ("CPU"), "flash" is disk (LMCache's
"LocalDisk"). tierkv sends `parent_block_hash` None and `token_ids` empty: the manager
sees hashes, not tokens, and a hash already pins its whole prefix; consumers that
recompute hashes from tokens must compute tierkv's chain (cache.block_hash) instead.
`AllBlocksCleared` (no medium) clears every tier; the publisher sends it first, so a
restarted replica's subscribers drop what they knew.

Replay, as vLLM's: a ROUTER socket answers a request `[b"", start_seq (8 bytes)]` from a
DEALER with `[b"", seq, payload]` for every kept batch with `seq >= start_seq`, then
`[b"", END_SEQ, epoch]`, where `epoch` is 8 random bytes drawn when the publisher
started (vLLM sends an empty frame there and its subscribers ignore it; tierkv's
subscriber takes a new epoch for a restarted publisher). The publisher keeps the last
`buffer_steps` batches; a request for older ones first gets a snapshot batch (numbered
one below the oldest kept batch: `AllBlocksCleared` then one `BlockStored` per tier with
every block held as of then), so a subscriber joining at any time rebuilds the exact
index.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from cache.block_hash import BlockHash
from cache.stats import Tier

logger = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
DEFAULT_BUFFER_STEPS = 10_000


@dataclass(frozen=True, slots=True)
class BlocksStored:
    """`tier` now holds `block_hashes`."""

    tier: Tier
    block_hashes: tuple[BlockHash, ...]


@dataclass(frozen=True, slots=True)
class BlocksRemoved:
    """`tier` no longer holds `block_hashes`."""

    tier: Tier
    block_hashes: tuple[BlockHash, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """Every tier is empty (sent when a publisher starts)."""


KVEvent = BlocksStored | BlocksRemoved | AllBlocksCleared
EventCallback = Callable[[KVEvent], None]


def ignore_event(event: KVEvent) -> None:
    """The default `on_event`: events off."""


# -- wire format ---------------------------------------------------------------------------


def encode_batch(ts: float, events: Sequence[KVEvent], block_size: int) -> bytes:
    """msgpack payload of one vLLM `EventBatch`."""
    wire: list[list[Any]] = []
    for event in events:
        if isinstance(event, BlocksStored):
            hashes = [bytes(h) for h in event.block_hashes]
            wire.append(["BlockStored", hashes, None, [], block_size, None, event.tier.value])
        elif isinstance(event, BlocksRemoved):
            hashes = [bytes(h) for h in event.block_hashes]
            wire.append(["BlockRemoved", hashes, event.tier.value])
        else:
            wire.append(["AllBlocksCleared"])
    return bytes(msgpack.packb([ts, wire], use_bin_type=True))


def decode_batch(payload: bytes) -> tuple[float, list[KVEvent]]:
    """(ts, events) of one payload. Raises ValueError for a malformed or foreign one.

    Events of a medium tierkv does not know (another engine's "GPU") are skipped.
    """
    try:
        batch = msgpack.unpackb(payload, raw=False)
        ts, wire = float(batch[0]), batch[1]
        events: list[KVEvent] = []
        for item in wire:
            tag = item[0]
            if tag == "AllBlocksCleared":
                events.append(AllBlocksCleared())
                continue
            medium = item[6] if tag == "BlockStored" else item[2]
            if medium not in Tier._value2member_map_:
                continue
            hashes = tuple(BlockHash(bytes(h)) for h in item[1])
            if tag == "BlockStored":
                events.append(BlocksStored(Tier(medium), hashes))
            elif tag == "BlockRemoved":
                events.append(BlocksRemoved(Tier(medium), hashes))
            else:
                raise ValueError(f"unknown KV event {tag!r}")
    except (msgpack.UnpackException, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed KV event batch: {exc}") from exc
    return ts, events


# -- the index a stream describes ----------------------------------------------------------


@dataclass(slots=True)
class EventIndex:
    """The blocks each tier holds, as told by a stream of events. Not thread-safe."""

    blocks: dict[Tier, set[BlockHash]] = field(default_factory=lambda: {t: set() for t in Tier})

    def apply(self, events: Iterable[KVEvent]) -> None:
        for event in events:
            if isinstance(event, BlocksStored):
                self.blocks[event.tier].update(event.block_hashes)
            elif isinstance(event, BlocksRemoved):
                self.blocks[event.tier].difference_update(event.block_hashes)
            else:
                for held in self.blocks.values():
                    held.clear()

    def counts(self) -> dict[Tier, int]:
        return {tier: len(held) for tier, held in self.blocks.items()}

    def snapshot_events(self) -> list[KVEvent]:
        """Events that rebuild this index from nothing."""
        events: list[KVEvent] = [AllBlocksCleared()]
        for tier, held in self.blocks.items():
            if held:
                events.append(BlocksStored(tier, tuple(held)))
        return events


def coalesce(events: Sequence[KVEvent]) -> list[KVEvent]:
    """Merge runs of adjacent events of one kind and tier (order is kept)."""
    merged: list[KVEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            isinstance(event, BlocksStored | BlocksRemoved)
            and type(last) is type(event)
            and isinstance(last, BlocksStored | BlocksRemoved)
            and last.tier is event.tier
        ):
            merged[-1] = type(event)(event.tier, last.block_hashes + event.block_hashes)
        else:
            merged.append(event)
    return merged


# -- publisher -----------------------------------------------------------------------------


class KVEventPublisher:
    """ZMQ PUB (plus an optional ROUTER for replay) fed by a queue and one thread.

    `publish` may be called from any thread and never blocks (the queue is unbounded: a
    dropped event would leave a gap no replay could fill). Both endpoints are bound
    (`tcp://host:port`; port `*` picks one, see `endpoint`); binding errors raise from the
    constructor. `close` sends what is queued and stops the thread.
    """

    POLL_SECONDS = 0.02

    def __init__(
        self,
        endpoint: str,
        replay_endpoint: str | None,
        block_size: int,
        topic: str = "",
        buffer_steps: int = DEFAULT_BUFFER_STEPS,
    ) -> None:
        if buffer_steps < 1:
            raise ValueError("buffer_steps must be >= 1")
        self._block_size = block_size
        self._topic = topic.encode("utf-8")
        self._buffer_steps = buffer_steps
        self._queue: queue.SimpleQueue[KVEvent | None] = queue.SimpleQueue()
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.set_hwm(100_000)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            self._pub.bind(endpoint)
            self.endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.replay_endpoint: str | None = None
            if replay_endpoint:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_endpoint)
                self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError:
            self._pub.close()
            if self._replay is not None:
                self._replay.close()
            raise
        # Kept batches (seq, payload, events) and the index as of just before the oldest.
        self._kept: deque[tuple[int, bytes, list[KVEvent]]] = deque()
        self._base = EventIndex()
        self._next_seq = 0
        self.epoch = os.urandom(8)  # tells a restarted publisher apart (END frames)
        self.num_published = 0  # batches sent (read by tests and logs)
        self._queue.put(AllBlocksCleared())
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
        self._thread.start()

    def publish(self, event: KVEvent) -> None:
        """Queue `event` for sending. Never blocks."""
        self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Send everything queued, then stop the thread and close the sockets."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                if self._replay is not None and self._replay.poll(0):
                    self._serve_replay()
                events, stop = self._drain()
                if events:
                    self._send(coalesce(events))
                if stop:
                    return
        except Exception:
            logger.exception("KV event publisher stopped")
        finally:
            self._pub.close()
            if self._replay is not None:
                self._replay.close()

    def _drain(self) -> tuple[list[KVEvent], bool]:
        """Everything queued now (waiting up to POLL_SECONDS for the first event)."""
        events: list[KVEvent] = []
        try:
            item = self._queue.get(timeout=self.POLL_SECONDS)
            while True:
                if item is None:
                    return events, True
                events.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return events, False

    def _send(self, events: list[KVEvent]) -> None:
        seq = self._next_seq
        self._next_seq += 1
        payload = encode_batch(time.time(), events, self._block_size)
        self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
        self.num_published += 1
        self._kept.append((seq, payload, events))
        while len(self._kept) > self._buffer_steps:
            _, _, dropped = self._kept.popleft()
            self._base.apply(dropped)

    def _serve_replay(self) -> None:
        frames = self._replay.recv_multipart() if self._replay is not None else []
        if len(frames) != 3 or len(frames[2]) != 8:
            logger.warning("ignoring a malformed KV event replay request")
            return
        client, _, start = frames
        start_seq = int.from_bytes(start, "big")
        assert self._replay is not None
        if self._kept and start_seq < self._kept[0][0] and self._kept[0][0] > 0:
            snapshot_seq = self._kept[0][0] - 1
            payload = encode_batch(time.time(), self._base.snapshot_events(), self._block_size)
            self._replay.send_multipart((client, b"", snapshot_seq.to_bytes(8, "big"), payload))
        for seq, payload, _ in self._kept:
            if seq >= start_seq:
                self._replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        self._replay.send_multipart((client, b"", END_SEQ, self.epoch))
