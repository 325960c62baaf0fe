"""Calibration targets: modelled within 15% of the published figures."""

from __future__ import annotations

import pytest

from npu_sim.calibrate import MAX_DEVIATION, TARGETS, Workload, main, simulate_serving
from npu_sim.cost_model import step_cost
from npu_sim.device import get_device
from npu_sim.model_config import get_cost_model_config


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.model)
def test_modelled_within_15_percent_of_published(target) -> None:
    assert abs(target.modelled() / target.published - 1) <= MAX_DEVIATION


def test_batch_latency_is_the_sum_of_its_step_costs() -> None:
    model, dev = get_cost_model_config("llama-3.1-8b"), get_device("h100-sxm")
    work = Workload(
        (0.0,) * 2, input_len=4, output_len=3, max_concurrency=2, max_num_batched_tokens=100
    )
    expected = step_cost(model, dev, [(4, 4), (4, 4)]).seconds
    expected += step_cost(model, dev, [(1, 5), (1, 5)]).seconds
    expected += step_cost(model, dev, [(1, 6), (1, 6)]).seconds
    result = simulate_serving(model, dev, work)
    assert result.duration_seconds == pytest.approx(expected)
    assert result.num_steps == 3 and result.num_output_tokens == 6


def test_main_prints_the_table(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "| target |" in out and "1,622.0" in out and "997.5" in out
