"""The engine tells the model which sequences finished (`EngineCore.take_finished` ->
`Executor.release`), so a new request on the prefix a finished one left in HBM decodes
over that sequence's kept widened context instead of widening its whole context again."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cache.block_hash import root_hash
from npu_sim.model_config import get_model_config
from npu_sim.sampling import Sampler, SamplingParams
from server.config import Settings
from server.engine.core import EngineCore
from server.engine.request import EngineRequest
from server.stack import EngineStack, build_stack
from tests.npu_sim.pools import count_widened_blocks


def _request(
    stack: EngineStack, request_id: str, prompt: list[int], max_tokens: int
) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampler=Sampler(SamplingParams(temperature=0.0), stack.tokenizer.sampleable_mask),
        max_tokens=max_tokens,  # decode steps: one fewer (the prefill gives the first)
        root_hash=root_hash(stack.numerics_id, 1),
    )


def _run(core: EngineCore, *requests: EngineRequest) -> None:
    for request in requests:
        core.add(request)
    while core.scheduler.requests:
        core.poll_transfers()
        if core.has_work():
            core.step()
    assert {f.request_id for f in core.take_finished()} == {r.request_id for r in requests}


def test_a_new_request_decodes_over_the_row_a_finished_one_left(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(ddr_gb=0, flash_gb=0)
    stack = build_stack(settings, lambda: None)
    rng = np.random.default_rng(0)
    shared, other = (rng.integers(65, 90, 70).tolist() for _ in range(2))
    try:
        # Two rows; a decodes one step longer, so d's row is the least recently used.
        _run(stack.core, _request(stack, "d", other, 2), _request(stack, "a", shared, 3))
        widened = count_widened_blocks(monkeypatch)
        _run(stack.core, _request(stack, "b", shared, 2))  # 4 of its 5 blocks are a's
        layers = get_model_config(settings.model).num_layers
        # Only b's own last block, K and V, every layer; on d's row (unreleased rows are
        # taken least recently used first) it widened all 5.
        assert sum(widened) == 2 * 1 * layers
    finally:
        stack.close()
