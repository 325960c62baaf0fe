"""`simulate`: the same decisions as the live server, run's result.json schema, the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from load import report, workloads
from load.cli import main
from load.runner import Arrival, run_workload
from load.simulate import simulate_workload
from load.stats import Slo
from npu_sim.model_config import get_cost_model_config
from server.config import GB, Settings
from tests.server.live import run_server

SHAPE = get_cost_model_config("llama-3-8b")
BLOCK_BYTES = SHAPE.kv_bytes_per_token * 16  # 2 MiB logical


def gib(num_blocks: int) -> float:
    return num_blocks * BLOCK_BYTES / GB


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tkv-sim-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def shape(value: Any) -> Any:
    """The keys of a result, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value and isinstance(value[0], dict) else []
    return None


def test_simulator_takes_the_live_servers_cache_decisions_and_writes_runs_schema(
    data_dir: Path,
):
    # 6 documents of 1,024 tokens and 3 questions each, one request at a time: HBM holds
    # 100 blocks (1.5 documents), DDR 120 and flash 400, so prefixes come from every tier.
    # No reload deadline: a loaded machine's Redis may miss it in wall time.
    settings = Settings(
        emulate="llama-3-8b",
        pace="none",
        data_dir=data_dir,
        hbm_gb=(SHAPE.weight_bytes + 100 * BLOCK_BYTES) / GB,
        ddr_gb=gib(120),
        flash_gb=gib(400),
        max_model_len=1536,
        reload_timeout_ms=0,
    )
    specs = workloads.shared_prefix(6, 3, 1024, 48, 4, seed=3)
    arrival = Arrival(concurrency=1)
    slo = Slo(ttft_ms=1000.0)
    with run_server(settings) as live:
        measured = asyncio.run(run_workload(live.url, specs, arrival, slo, sample_interval_s=0.2))
    simulated = simulate_workload(settings, specs, arrival, slo).outcome
    assert measured.stats.num_errors == 0 and simulated.stats.num_errors == 0
    hits = measured.server["prefix_cache_hits"]
    assert hits["ddr"] > 0 and hits["flash"] > 0 and hits["hbm"] > 0
    assert simulated.server["prefix_cache_hits"] == hits
    assert simulated.server["prefix_cache_queries"] == measured.server["prefix_cache_queries"]
    assert [r.cached_tokens for r in simulated.records] == [
        r.cached_tokens for r in measured.records
    ]
    assert [r.prompt_tokens for r in simulated.records] == [
        r.prompt_tokens for r in measured.records
    ]
    live_result = report.build_result(measured, {"workload": "shared-prefix"})
    sim_result = report.build_result(simulated, {"workload": "shared-prefix"})
    assert shape(sim_result) == shape(live_result)


def test_simulate_command_and_sweep(tmp_path: Path):
    flags = [
        "simulate",
        "--emulate",
        "llama-3-8b",
        "--hbm-gb",
        f"{(SHAPE.weight_bytes + 200 * BLOCK_BYTES) / GB:.6f}",
        "--max-model-len",
        "2048",
        "--workload",
        "multiturn",
        "--num-users",
        "3",
        "--num-turns",
        "3",
        "--system-len",
        "300",
        "--user-len",
        "200",
        "--max-tokens",
        "8",
        "--rate",
        "4",
        "--slo-ttft",
        "500",
    ]
    out = tmp_path / "sweep"
    code = main([*flags, "--ddr-gb", "0", "1", "--flash-gb", "0", "--sweep", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(r["ddr_gb"], r["flash_gb"]) for r in rows] == [(0.0, 0.0), (1.0, 0.0)]
    assert (out / "sweep.png").stat().st_size > 0
    one = report.read_result(out / "ddr1_flash0")
    assert one["base_url"] == "simulated" and one["num_requests"] == 9
    assert one["simulated"]["settings"]["ddr_gb"] == 1.0
    assert (out / "ddr1_flash0" / "ttft_cdf.png").exists()
    assert main([*flags, "--ddr-gb", "0", "1", "--out", str(tmp_path / "x")]) == 2  # no --sweep


def test_tierkv_simulate_hands_over_to_load(tmp_path: Path):
    bad = subprocess.run(
        [sys.executable, "-m", "server", "simulate", "--emulate", "no-such-model"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert bad.returncode == 2
    assert "--workload" in bad.stderr  # argparse names the missing option


def test_open_loop_gets_past_a_lull_longer_than_its_lookahead(data_dir: Path):
    # The hour of trace at --time-scale 8 spun forever at request 6,010: the replica
    # went idle, the next arrival instant (two requests) was more than the lookahead
    # (10 virtual s) away; the first was submitted (the replica was empty), the second
    # not (beyond the lookahead), and the replica, whose next event was that instant,
    # never moved. The thread is only a guard, so a regression fails instead of hanging.
    settings = Settings(emulate="llama-3-8b", pace="none", data_dir=data_dir, ddr_gb=0)
    specs = [
        workloads.RequestSpec(i, workloads.Api.COMPLETIONS, "x" * 64, 4, 64, arrival_s=t)
        for i, t in enumerate((0.0, 100.0, 100.0))
    ]
    outcome: list[Any] = []

    def run() -> None:
        outcome.append(simulate_workload(settings, specs, Arrival(trace_times=True), Slo()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the simulation hung"
    records = outcome[0].outcome.records
    assert [r.status for r in records] == [200, 200, 200]
    assert min(r.start_s for r in records[1:]) == 100.0
