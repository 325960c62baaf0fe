"""Task order on one transfer lane: FIFO, except urgent loads pass unrelated queued work."""

from __future__ import annotations

import threading

from cache.block_hash import BlockHash
from cache.stats import Tier
from cache.transfer import _Lane


def key(name: str) -> BlockHash:
    return BlockHash(name.encode().ljust(16, b"\0"))


def run_order(tasks: list[tuple[str, set[str], bool]]) -> list[str]:
    """Queue `tasks` (name, keys, urgent) behind a task that holds the lane, release it,
    and return the order they ran in."""
    lane = _Lane(Tier.DDR)
    gate, done = threading.Event(), threading.Event()
    order: list[str] = []
    lane.put(gate.wait)
    for name, keys, urgent in tasks:
        lane.put(lambda name=name: order.append(name), frozenset(map(key, keys)), urgent)
    lane.put(done.set)
    gate.set()
    assert done.wait(30)
    lane.put(None)
    lane.thread.join(30)
    return order


def test_an_urgent_load_passes_spills_and_prefetches_of_other_blocks():
    tasks = [
        ("spill a", {"a"}, False),
        ("prefetch b", {"b"}, False),
        ("load c", {"c"}, True),
    ]
    assert run_order(tasks) == ["load c", "spill a", "prefetch b"]


def test_an_urgent_load_never_passes_work_on_its_own_blocks_nor_another_urgent_load():
    tasks = [
        ("spill a", {"a"}, False),
        ("load x", {"x"}, True),
        ("spill b", {"b"}, False),
        ("load b", {"b", "y"}, True),  # must see the spill of b queued before it
        ("load z", {"z"}, True),  # passes nothing urgent: after load b
    ]
    assert run_order(tasks) == ["load x", "spill a", "spill b", "load b", "load z"]


def test_a_demotion_read_is_not_passed_by_later_urgent_loads():
    """A DemoteJob's DDR read is queued urgent (its flash half may be holding the flash
    lane, waiting for it): urgent loads queued after it run after it. Queued non-urgent,
    it was passed by every later urgent load, without end under steady load."""
    tasks = [
        ("load a", {"a"}, True),
        ("demote read d", {"d"}, True),
        ("load b", {"b"}, True),
        ("load c", {"c"}, True),
    ]
    assert run_order(tasks) == ["load a", "demote read d", "load b", "load c"]


def test_an_urgent_load_given_its_keys_as_a_list_passes_and_waits_alike():
    """A load hands its lane a list of keys (hashed into a set only when there is a
    queued task to pass): the order is the same as with a set."""
    lane = _Lane(Tier.DDR)
    gate, done = threading.Event(), threading.Event()
    order: list[str] = []
    lane.put(gate.wait)
    lane.put(lambda: order.append("spill a"), frozenset([key("a")]))
    lane.put(lambda: order.append("spill b"), frozenset([key("b")]))
    lane.put(lambda: order.append("load b"), [key("y"), key("b")], urgent=True)
    lane.put(lambda: order.append("spill c"), frozenset([key("c")]))
    lane.put(lambda: order.append("load z"), [key("z")], urgent=True)
    lane.put(done.set)
    gate.set()
    assert done.wait(30)
    lane.put(None)
    lane.thread.join(30)
    assert order == ["spill a", "spill b", "load b", "load z", "spill c"]
