"""CoreGroup: hard slices never wait, a shared device queues steps, time slices alternate
in quantum turns, and preemption frees the cores at the cut."""

from __future__ import annotations

import pytest

from npu_sim.arbiter import CoreGroup, SharedCores, Turn


def drain(group: CoreGroup) -> list[Turn]:
    turns = []
    while group.next_start() is not None:
        turns.append(group.grant())
    return turns


def test_fifo_group_queues_whole_steps() -> None:
    g = CoreGroup("dev")
    g.submit("a", 0.0, 3.0)
    g.submit("b", 1.0, 2.0)
    assert drain(g) == [Turn("a", 0.0, 3.0, True), Turn("b", 3.0, 5.0, True)]
    assert g.busy_seconds == {"a": 3.0, "b": 2.0}


def test_idle_group_starts_at_ready_time() -> None:
    g = CoreGroup("dev")
    g.submit("a", 5.0, 1.0)
    assert g.next_start() == 5.0
    assert g.grant() == Turn("a", 5.0, 6.0, True)


def test_time_slicing_alternates_turns() -> None:
    g = CoreGroup("shared", quantum=1.0)
    g.submit("a", 0.0, 2.5)
    g.submit("b", 0.0, 1.5)
    turns = drain(g)
    assert [(t.member, t.start, t.end, t.finishes_step) for t in turns] == [
        ("a", 0.0, 1.0, False),
        ("b", 1.0, 2.0, False),
        ("a", 2.0, 3.0, False),
        ("b", 3.0, 3.5, True),
        ("a", 3.5, 4.0, True),
    ]


def test_alone_on_time_slices_runs_uninterrupted() -> None:
    g = CoreGroup("shared", quantum=1.0)
    g.submit("a", 0.0, 2.5)
    assert [t.end for t in drain(g)] == [1.0, 2.0, 2.5]


def test_one_step_per_member() -> None:
    g = CoreGroup("dev")
    g.submit("a", 0.0, 1.0)
    with pytest.raises(ValueError, match="pending"):
        g.submit("a", 0.0, 1.0)


def test_preempt_cuts_the_running_turn() -> None:
    g = CoreGroup("dev")
    g.submit("a", 0.0, 4.0)
    g.grant()
    assert g.preempt("a", 1.5) == 1.5
    assert g.busy_seconds["a"] == 1.5 and g.current == Turn("a", 0.0, 1.5, False)
    g.submit("a", 1.5, 1.0)  # the replanned step starts at the cut
    assert g.grant() == Turn("a", 1.5, 2.5, True)


def test_shared_cores_book_steps_back_to_back() -> None:
    cores = SharedCores("ts")
    assert cores.reserve(0.0, 1.0) == 1.0
    assert cores.reserve(0.5, 1.0) == 2.0  # waits for the neighbour's step
    assert cores.reserve(5.0, 1.0) == 6.0  # idle cores: starts at once
