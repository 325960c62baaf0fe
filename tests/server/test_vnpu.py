"""vNPU partitions in the server: routing by model, per-vNPU quotas in the shared DDR and
flash tiers, /npu and the tierkv:vnpu_* metrics (real embedded Redis, real LMDB)."""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from cache.stats import Tier
from cache.tiers.redis_tier import connect_redis
from server.cli import build_parser
from server.config import GB, Settings
from server.vnpu.partition import build_vnpu_device, check_fits
from tests.server.live import LiveServer, run_server

VNPUS = ["a=cores=8,hbm_gb=0.05:tiny-llama", "b=cores=4,hbm_gb=0.1:small-llama"]


@pytest.fixture
def vnpu_server(make_settings: Callable[..., Settings]) -> Iterator[LiveServer]:
    settings = make_settings(hbm_gb=None, vnpu=VNPUS, ddr_gb=0.06, flash_gb=0.3)
    with run_server(settings) as live:
        yield live


def complete(live: LiveServer, model: str, prompt: str, max_tokens: int = 4) -> dict:
    r = live.client.post(
        "/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_models_are_listed_and_requests_route_by_model(vnpu_server: LiveServer) -> None:
    live = vnpu_server
    ids = [m["id"] for m in live.client.get("/v1/models").json()["data"]]
    assert ids == ["tiny-llama", "small-llama"]
    assert live.client.get("/v1/models/small-llama").json()["id"] == "small-llama"
    out = complete(live, "small-llama", "hello " * 10)
    assert out["model"] == "small-llama" and out["usage"]["completion_tokens"] == 4
    busy_a = live.metric("tierkv:vnpu_modelled_busy_seconds_total", vnpu="a")
    busy_b = live.metric("tierkv:vnpu_modelled_busy_seconds_total", vnpu="b")
    assert busy_a == 0 and busy_b > 0
    assert complete(live, "tiny-llama", "hi")["model"] == "tiny-llama"
    assert live.metric("tierkv:vnpu_modelled_busy_seconds_total", vnpu="a") > 0
    tok = live.client.post("/tokenize", json={"model": "small-llama", "prompt": "ab"})
    assert tok.status_code == 200 and tok.json()["count"] == 3  # BOS + 2 bytes
    r = live.client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "small-llama" in err["message"]


def test_quotas_split_ddr_and_flash_and_keys_stay_apart(vnpu_server: LiveServer) -> None:
    live = vnpu_server
    status = live.client.get("/npu").json()
    a, b = status["vnpus"]
    # HBM 0.05 : 0.1 GiB -> a gets 1/3 of DDR and flash, b 2/3 (logical bytes).
    assert a["tier_quota_bytes"]["ddr"] == pytest.approx(0.06 * GB / 3, rel=1e-3)
    assert b["tier_quota_bytes"]["flash"] == pytest.approx(0.3 * GB * 2 / 3, rel=1e-3)
    complete(live, "tiny-llama", "The quick brown fox " * 20)
    assert live.offload("hbm") > 0  # /cache/offload acts on the first vNPU (a)
    status = live.client.get("/npu").json()
    assert status["vnpus"][0]["tier_used_bytes"]["ddr"] > 0
    assert status["vnpus"][1]["tier_used_bytes"]["ddr"] == 0
    # One Redis for the device, each vNPU's keys in its own namespace.
    assert live.app is not None
    device = live.app.state.vnpu_device
    client = connect_redis(device.embedded_redis.url)
    keys = client.keys("*")
    client.close()
    assert keys and all(b".vnpu-a:" in k for k in keys)


def test_npu_status_json_text_and_core_metrics(vnpu_server: LiveServer) -> None:
    live = vnpu_server
    complete(live, "tiny-llama", "abc")
    status = live.client.get("/npu").json()
    assert status["device"] == "ascend-910b3" and status["ai_cores"] == 20
    a, b = status["vnpus"]
    assert a["cores"] == list(range(8)) and b["cores"] == list(range(8, 12))
    assert a["slicing"] == "hard" and a["hbm_capacity_bytes"] == int(0.05 * GB)
    assert 0 < a["hbm_used_bytes"] <= a["hbm_capacity_bytes"]
    assert [c["vnpu"] for c in status["cores"]] == ["a"] * 8 + ["b"] * 4 + [""] * 8
    text = live.client.get("/npu", headers={"accept": "text/plain"}).text
    assert "npu-smi" in text and "tiny-llama" in text and "small-llama" in text
    assert live.metric("tierkv:vnpu_ai_cores", vnpu="b") == 4
    assert live.metric("tierkv:vnpu_hbm_capacity_bytes", vnpu="b") == int(0.1 * GB)
    for core in ("0", "19"):
        live.metric("tierkv:npu_core_utilisation", core=core)  # present, parses


def test_npu_is_404_without_partitions(server: LiveServer) -> None:
    r = server.client.get("/npu")
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"emulate": "llama-3-8b"}, "drop --emulate"),
        ({"hbm_gb": 1.0}, "drop --emulate"),
        ({"served_model_name": ["x"]}, "each vNPU serves"),
        ({"vnpu": ["a=vir02:tiny-llama", "b=vir02:tiny-llama"]}, "its own model"),
        ({"vnpu": ["a=vir16:tiny-llama", "b=vir08:small-llama"]}, "cores"),
        ({"vnpu": ["a=vir02:gpt-9"]}, "gpt-9"),
        ({"vnpu": []}, "one or more"),
        ({"role": "decode", "redis_url": "redis://localhost:1", "ddr_gb": 1}, "--role"),
    ],
)
def test_bad_vnpu_settings_are_rejected(overrides: dict, match: str) -> None:
    base = {"vnpu": ["a=vir02:tiny-llama"]}
    with pytest.raises(ValidationError, match=match):
        Settings(**(base | overrides))


def test_vnpu_specs_are_parsed_once_into_typed_slices() -> None:
    settings = Settings(vnpu=["a=vir08:tiny-llama", "b=cores=4,hbm_gb=8,slicing=time:llama-3-8b"])
    a, b = settings.vnpu_slices
    assert (a.name, a.model, a.cores, a.slicing, a.first_core) == ("a", "tiny-llama", 8, "hard", 0)
    assert (b.name, b.cores, b.hbm_bytes, b.slicing, b.first_core) == ("b", 4, 8 * GB, "time", 8)
    assert b.device.ai_cores == 4
    assert Settings().vnpu_slices == ()
    assert settings.model_copy(update={"vnpu": None}).vnpu_slices == ()
    assert settings.model_copy(update={"ddr_gb": 1.0}).vnpu_slices == (a, b)
    with pytest.raises(RuntimeError, match="without validation"):
        _ = settings.model_copy(update={"vnpu": ["c=vir02:tiny-llama"]}).vnpu_slices


def test_vnpu_flag_repeats() -> None:
    args = build_parser().parse_args(
        ["serve", "--vnpu", "a=vir08:tiny-llama", "--vnpu", "b=vir08:smollm2-135m"]
    )
    assert args.vnpu == ["a=vir08:tiny-llama", "b=vir08:smollm2-135m"]


def test_time_sliced_vnpus_share_their_cores(make_settings: Callable[..., Settings]) -> None:
    vnpus = [
        "a=cores=2,hbm_gb=0.05,slicing=time:tiny-llama",
        "b=cores=2,hbm_gb=0.1,slicing=time:small-llama",
        "c=cores=4,hbm_gb=20:llama-3-8b",
    ]
    settings = make_settings(hbm_gb=None, vnpu=vnpus, ddr_gb=0, flash_gb=0)
    with run_server(settings) as live:
        assert complete(live, "small-llama", "shared")["usage"]["completion_tokens"] == 4
        status = live.client.get("/npu").json()
        a, b, c = status["vnpus"]
        assert a["slicing"] == b["slicing"] == "time" and c["slicing"] == "hard"
        assert c["cores"] == [0, 1, 2, 3] and a["cores"] == b["cores"] == [4, 5]
        assert [x["vnpu"] for x in status["cores"][:7]] == ["c"] * 4 + ["a+b"] * 2 + [""]


def test_cli_rejects_a_model_too_big_for_its_slice(tmp_path) -> None:
    from tests.server.test_cli import run_cli

    result = run_cli(
        "serve", "--vnpu", "a=cores=2,hbm_gb=0.01:small-llama", "--data-dir", str(tmp_path)
    )
    assert result.returncode != 0 and "vnpu a: hbm-gb" in result.stderr


def test_a_killed_shared_redis_is_restarted_for_every_vnpu(
    make_settings: Callable[..., Settings],
) -> None:
    """One supervisor owns the device's embedded Redis: when it dies it is restarted and
    every vNPU marks DDR up again as restarted (so each manager drops its DDR index).
    Before the fix each vNPU's supervisor only probed, and DDR stayed down for good."""
    settings = make_settings(hbm_gb=None, vnpu=VNPUS, ddr_gb=0.06, flash_gb=0.3)
    device = build_vnpu_device(settings, lambda name: lambda: None)
    try:
        embedded = device.embedded_redis
        assert embedded is not None and embedded.pid is not None
        healths = [v.stack.cache.health[Tier.DDR] for v in device.vnpus]
        os.kill(embedded.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        restarts = [0] * len(healths)
        while not all(restarts) or not embedded.is_running:
            assert time.monotonic() < deadline, "the shared Redis was not restarted"
            restarts = [n + h.take_restarts() for n, h in zip(restarts, healths, strict=True)]
            time.sleep(0.05)  # poll interval
        assert all(h.state()[0] == "ok" for h in healths)
    finally:
        device.close()


def test_the_shared_redis_is_sized_in_stored_bytes(
    make_settings: Callable[..., Settings],
) -> None:
    """Redis's maxmemory follows the bytes the vNPUs really store, as on one engine. It
    was sized from the logical bytes: 64x too large for an emulated model."""
    vnpus = ["a=cores=8,hbm_gb=16:llama-3-8b", "b=cores=8,hbm_gb=16:llama-3.1-8b"]
    settings = make_settings(hbm_gb=None, vnpu=vnpus, ddr_gb=64, flash_gb=0)
    device = build_vnpu_device(settings, lambda name: lambda: None)
    try:
        assert device.embedded_redis is not None
        client = connect_redis(device.embedded_redis.url)
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
        client.close()
        stored = settings.ddr_bytes * settings.kv_bytes_fraction
        assert stored < maxmemory <= 1.25 * stored  # one headroom for Redis's own overhead
    finally:
        device.close()


def readme_vnpu_commands() -> list[list[str]]:
    """Every `tierkv serve ... --vnpu ...` command in README.md, as argv after `tierkv`."""
    text = (Path(__file__).parents[2] / "README.md").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        shlex.split(line, comments=True)[1:]
        for line in lines
        if line.startswith("tierkv serve ") and "--vnpu" in line
    ]


@pytest.mark.parametrize("argv", readme_vnpu_commands(), ids=" ".join)
def test_the_readme_vnpu_commands_fit_their_slices(argv: list[str], tmp_path: Path) -> None:
    """The README's examples start: each model fits its slice (the 310P example did not)."""
    args = build_parser().parse_args([*argv, "--data-dir", str(tmp_path)])
    settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    check_fits(settings)
