"""--pace real with --cost-model: steps last at least the modelled device time."""

from __future__ import annotations

from tests.server.live import run_server


def test_real_pace_charges_the_cost_model(make_settings):
    settings = make_settings(pace="real", cost_model="llama-3-8b")
    with run_server(settings) as server:
        server.complete("pace me " * 50, max_tokens=20)
        modelled = server.metric("tierkv:npu_modelled_busy_seconds_total")
        wall = server.metric("tierkv:npu_wall_busy_seconds_total")
        steps = server.metric("tierkv:engine_steps_total")
    # An 8B decode step on a 910B reads ~16 GB of weights at 1.6 TB/s: ~10 ms.
    assert steps >= 20
    assert modelled >= 0.009 * steps
    assert wall >= modelled  # pacing: no step finished before its modelled time
