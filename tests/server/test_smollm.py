"""`--model smollm2-135m` serves real text, and its hits from every tier are exact."""

from __future__ import annotations

from collections.abc import Callable

from npu_sim.model_config import get_model_config
from server.config import GB, Settings
from tests.server.live import run_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_capital_of_france_from_cold_hbm_ddr_and_flash(make_settings: Callable[..., Settings]):
    hbm_gb = get_model_config("smollm2-135m").weight_bytes / GB + 0.15
    with run_server(make_settings(model="smollm2-135m", hbm_gb=hbm_gb)) as server:

        def ask() -> tuple[str, int, str]:
            r = server.client.post(
                "/v1/chat/completions",
                json={
                    "model": "smollm2-135m",
                    "messages": QUESTION,
                    "max_tokens": 20,
                    "temperature": 0,
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            choice = body["choices"][0]
            cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
            return choice["message"]["content"], cached, choice["finish_reason"]

        cold, cached, reason = ask()
        assert "Paris" in cold and cached == 0 and reason == "stop"
        hbm = ask()
        assert hbm[0] == cold and hbm[1] > 0
        assert server.offload("hbm") > 0
        assert ask() == hbm  # from DDR
        assert server.metric("tierkv:prefix_cache_hits_total", tier="ddr") == hbm[1]
        server.offload("hbm")
        assert server.offload("ddr") > 0
        assert ask() == hbm  # from flash
        assert server.metric("tierkv:prefix_cache_hits_total", tier="flash") == hbm[1]
        models = server.client.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["smollm2-135m"]
