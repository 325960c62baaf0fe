"""The simulator's optional front-end model (server.simulate.front_end)."""

from __future__ import annotations

import pytest

from server.simulate.engine import SimRecord, SimRequest, Simulator
from server.simulate.front_end import FrontEnd, FrontEndModel
from tests.server.test_simulate import settings


def _burst(front_end: FrontEndModel | None, num: int = 6) -> dict[int, SimRecord]:
    """`num` requests of different lengths, all arriving at t = 1 s."""
    sim = Simulator(settings(), front_end=front_end)
    for i in range(num):
        prompt = sim.tokenize_completion(f"burst {i} " * (20 + 15 * i))
        sim.submit(SimRequest(i, 1.0, prompt, 2))
    return {r.index: r for r in sim.run()}


def _first_tokens(records: dict[int, SimRecord]) -> list[float]:
    return [records[i].first_token_s or 0.0 for i in sorted(records)]


def test_the_default_model_changes_nothing():
    assert _first_tokens(_burst(FrontEndModel())) == _first_tokens(_burst(None))


def test_the_front_end_serves_one_request_at_a_time():
    front = FrontEnd(FrontEndModel(seconds_per_request=0.002, seconds_per_token=1e-5))
    assert front.enter(1.0, 100) == pytest.approx(1.003)
    assert front.enter(1.0, 200) == pytest.approx(1.007)  # queued behind the first
    assert front.enter(5.0, 0) == pytest.approx(5.002)  # idle meanwhile
    with pytest.raises(ValueError):
        FrontEndModel(seconds_per_request=-1.0)


def test_a_lone_request_reaches_the_engine_after_its_front_end_time():
    model = FrontEndModel(seconds_per_request=0.005, seconds_per_token=2e-5)
    plain, delayed = _burst(None, num=1)[0], _burst(model, num=1)[0]
    assert plain.first_token_s is not None and delayed.first_token_s is not None
    delay = model.service_seconds(plain.prompt_tokens)
    assert delayed.first_token_s - plain.first_token_s == pytest.approx(delay)
    assert delayed.arrival_s == plain.arrival_s  # TTFT still counts from the client's send


def test_same_instant_arrivals_in_a_seeded_order():
    in_order = _first_tokens(_burst(None))
    shuffled = [_first_tokens(_burst(FrontEndModel(tie_order_seed=s))) for s in range(4)]
    assert shuffled[0] == _first_tokens(_burst(FrontEndModel(tie_order_seed=0)))
    assert any(order != in_order for order in shuffled)
