"""`--verify-wide-context` makes a kept decode context that differs from the pool's bytes
fail loudly: the engine stops and the request gets a 503, never tokens computed from a
stale context. The server tests run with it on (conftest.make_settings), so this is what
any of them would see if a writer of the HBM pool missed its generation bump."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from server.config import Settings
from server.engine.core import EngineCore
from tests.server.live import run_server

PROMPT = "A prompt of a few blocks, long enough to be cached in HBM."
WAIT_S = 30.0  # a bound on waiting, not a speed claim


def _write_cached_blocks_without_a_bump(core: EngineCore) -> None:
    """Change one byte of every cached HBM block through the owner's own array, as a
    writer that forgot to bump the write generation would (only the owner can)."""
    pool = core.cache.pool
    blocks = [block for _, block in pool.cached_blocks_newest_first()]
    assert blocks, "the first request left no cached blocks"
    kv = pool._kv  # noqa: SLF001 - the owner's writable bytes, on purpose
    kv[blocks, 0, 0, 0, 0, 0] += np.float16(1.0)


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_a_missed_generation_bump_stops_the_engine_only_with_verification(
    make_settings: Callable[..., Settings], verify: bool
) -> None:
    with run_server(make_settings(verify_wide_context=verify)) as server:
        assert server.app is not None
        engine = server.app.state.engine
        first = server.complete(PROMPT, max_tokens=8)
        assert first["usage"]["prompt_tokens"] > 2 * server.settings.block_size

        done = threading.Event()

        def corrupt() -> None:
            try:
                _write_cached_blocks_without_a_bump(engine._core)  # noqa: SLF001
            finally:
                done.set()

        engine._submit(corrupt)  # noqa: SLF001 - on the engine thread, between steps
        assert done.wait(WAIT_S)
        assert engine.is_healthy  # the write itself breaks nothing yet

        # The same prompt hits the corrupted blocks; its decode reuses the first
        # request's kept columns, whose generations did not change.
        r = server.client.post("/v1/completions", json=server.completion_body(PROMPT, 8))
        if not verify:
            # Unchecked, the stale widening is used as if it were the pool's bytes: this is
            # the silent case the tests turn verification on for.
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
            return
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "engine_dead"
        assert "differs from the pool's bytes" in error["message"]
        deadline = time.monotonic() + WAIT_S
        while engine.is_healthy and time.monotonic() < deadline:
            time.sleep(0.01)  # poll interval, not a stand-in for work
        assert server.client.get("/health").status_code == 503
