"""KV events: vLLM's wire shape, publisher ordering, replay and snapshots for late joiners."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from cache.block_hash import BlockHash
from cache.event_subscriber import KVEventSubscriber
from cache.events import (
    AllBlocksCleared,
    BlocksRemoved,
    BlocksStored,
    EventIndex,
    KVEventPublisher,
    coalesce,
    decode_batch,
    encode_batch,
)
from cache.stats import Tier

TIMEOUT = 30.0


def h(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(16, "little"))


def test_batch_has_vllm_array_shape() -> None:
    events = [
        AllBlocksCleared(),
        BlocksStored(Tier.DDR, (h(1), h(2))),
        BlocksRemoved(Tier.HBM, (h(3),)),
    ]
    raw = msgpack.unpackb(encode_batch(12.5, events, 16), raw=False)
    assert raw == [
        12.5,
        [
            ["AllBlocksCleared"],
            ["BlockStored", [h(1), h(2)], None, [], 16, None, "ddr"],
            ["BlockRemoved", [h(3)], "hbm"],
        ],
    ]
    assert decode_batch(encode_batch(1.0, events, 16)) == (1.0, events)


def test_decode_skips_foreign_media_and_rejects_garbage() -> None:
    payload = msgpack.packb([1.0, [["BlockStored", [7], None, [1], 16, None, "GPU"]]])
    assert decode_batch(payload) == (1.0, [])
    with pytest.raises(ValueError):
        decode_batch(b"\xc1not msgpack")


def test_coalesce_merges_adjacent_runs_only() -> None:
    events = [
        BlocksStored(Tier.HBM, (h(1),)),
        BlocksStored(Tier.HBM, (h(2),)),
        BlocksRemoved(Tier.HBM, (h(1),)),
        BlocksStored(Tier.HBM, (h(1),)),
        BlocksStored(Tier.DDR, (h(3),)),
    ]
    assert coalesce(events) == [
        BlocksStored(Tier.HBM, (h(1), h(2))),
        BlocksRemoved(Tier.HBM, (h(1),)),
        BlocksStored(Tier.HBM, (h(1),)),
        BlocksStored(Tier.DDR, (h(3),)),
    ]


def _expected(events: list) -> dict[Tier, int]:
    index = EventIndex()
    index.apply(events)
    return index.counts()


def _publish_history(pub: KVEventPublisher, n: int) -> list:
    """Publish `n` separately sent changes; wait until each went out as its own batch."""
    events: list = []
    for i in range(n):
        event = (
            BlocksStored(Tier.HBM, (h(i),))
            if i % 3 or i < 3
            else BlocksRemoved(Tier.HBM, (h(i - 3),))
        )
        pub.publish(event)
        events.append(event)
        target = pub.num_published + 1
        _poll(lambda t=target: pub.num_published >= t)
    return events


def _poll(predicate) -> None:
    import time

    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("buffer_steps", [10_000, 3])
def test_late_joiner_rebuilds_the_exact_index(buffer_steps: int) -> None:
    """A subscriber that connects after the fact gets the history by replay (or, once
    the publisher forgot it, by snapshot) and then follows live batches."""
    pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", 16, buffer_steps=buffer_steps)
    try:
        _poll(lambda: pub.num_published >= 1)  # the initial AllBlocksCleared
        history = _publish_history(pub, 20)
        sub = KVEventSubscriber(pub.endpoint, pub.replay_endpoint)
        try:
            want = _expected(history)
            assert sub.wait_for(lambda index: index.counts() == want, TIMEOUT)
            live = [BlocksStored(Tier.FLASH, (h(100),)), BlocksRemoved(Tier.HBM, (h(1),))]
            for event in live:
                pub.publish(event)
            want = _expected(history + live)
            assert sub.wait_for(lambda index: index.counts() == want, TIMEOUT)
            assert sub.prefix_tiers([h(2), h(4)]) == [Tier.HBM, Tier.HBM]
            assert sub.prefix_tiers([h(100), h(1)]) == [Tier.FLASH]
        finally:
            sub.close()
    finally:
        pub.close()


def test_a_subscriber_catches_up_on_batches_its_sub_socket_missed() -> None:
    """ZeroMQ's slow joiner: batches published before a new SUB socket's subscription
    reaches the publisher are dropped, and with no later batch nothing reveals the gap.
    The subscriber asks the replay endpoint for what follows its last batch whenever it
    has heard nothing for a while, so it converges anyway. Here its SUB socket listens
    to an endpoint where nobody publishes: everything must come by replay."""
    pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", 16)
    try:
        _poll(lambda: pub.num_published >= 1)
        history = _publish_history(pub, 5)
        with zmq.Context.instance().socket(zmq.PUB) as silent:
            port = silent.bind_to_random_port("tcp://127.0.0.1")
            sub = KVEventSubscriber(f"tcp://127.0.0.1:{port}", pub.replay_endpoint)
            try:
                assert sub.wait_for(lambda index: index.counts() == _expected(history), TIMEOUT)
                live = [BlocksStored(Tier.FLASH, (h(100),)), BlocksRemoved(Tier.HBM, (h(1),))]
                for event in live:
                    pub.publish(event)
                want = _expected(history + live)
                assert sub.wait_for(lambda index: index.counts() == want, TIMEOUT)
            finally:
                sub.close()
    finally:
        pub.close()


def _bind_again(endpoint: str, replay: str | None) -> KVEventPublisher:
    """A publisher on endpoints a closed one just left: ZeroMQ unbinds on its I/O thread
    after `close()` returns, so the address may be in use for a moment (polled)."""
    import time

    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return KVEventPublisher(endpoint, replay, 16)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # poll interval, not a stand-in for work


def test_a_subscriber_follows_a_publisher_restarted_on_the_same_endpoints() -> None:
    """A restarted publisher numbers its batches from 0 again, and its first batch
    (`AllBlocksCleared`) goes out before the subscriber's SUB socket has reconnected.
    Before the epoch in the replay's END frame, the subscriber dropped the new batches as
    already seen and kept the old publisher's blocks for good."""
    first = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", 16)
    endpoint, replay = first.endpoint, first.replay_endpoint
    sub = KVEventSubscriber(endpoint, replay)
    try:
        _poll(lambda: first.num_published >= 1)
        history = _publish_history(first, 5)
        assert sub.wait_for(lambda index: index.counts() == _expected(history), TIMEOUT)
        first.close()
        second = _bind_again(endpoint, replay)
        try:
            second.publish(BlocksStored(Tier.FLASH, (h(100),)))
            want = {Tier.HBM: 0, Tier.DDR: 0, Tier.FLASH: 1}
            assert sub.wait_for(lambda index: index.counts() == want, TIMEOUT)
        finally:
            second.close()
    finally:
        sub.close()


def test_bind_failure_raises_and_releases() -> None:
    first = KVEventPublisher("tcp://127.0.0.1:*", None, 16)
    try:
        with pytest.raises(zmq.ZMQError):
            KVEventPublisher(first.endpoint, None, 16)
    finally:
        first.close()
