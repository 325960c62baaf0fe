"""TransferOverlap: the reload time the device spent idle (issue #10's overlap figure)."""

from __future__ import annotations

import pytest

from server.engine.overlap import TransferOverlap


def test_load_time_is_exposed_only_while_the_device_is_idle():
    overlap = TransferOverlap()
    overlap.observe(0.0, loading=True, busy=True)  # a load runs behind a step
    overlap.observe(3.0, loading=True, busy=False)  # the step ended; the load still runs
    overlap.observe(4.0, loading=False, busy=True)  # it landed; the request computes
    overlap.observe(9.0, loading=False, busy=False)
    assert overlap.inflight_seconds == pytest.approx(4.0)
    assert overlap.exposed_seconds == pytest.approx(1.0)
    assert overlap.hidden_fraction == pytest.approx(0.75)


def test_no_load_means_no_figure_and_idle_time_without_loads_is_not_exposed():
    overlap = TransferOverlap()
    assert overlap.hidden_fraction is None
    overlap.observe(0.0, loading=False, busy=False)
    overlap.observe(5.0, loading=False, busy=True)
    assert overlap.inflight_seconds == 0 and overlap.exposed_seconds == 0
    assert overlap.hidden_fraction is None
