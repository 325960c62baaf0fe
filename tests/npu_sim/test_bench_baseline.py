"""`npu_sim/bench.py --baseline`: the same file times an older checkout of the model."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from npu_sim.bench import _run_isolated, comparison_rows

ROOT = Path(__file__).resolve().parents[2]
OLD = "7636506"  # issue #6's reference commit: no npu_sim/kv_pool.py, bare array pools
TINY = ["--model=tiny-llama", "--prefill-lens=64", "--chunk=32", "--decode-batches=2"]


def _checkout(commit: str, dest: Path) -> Path:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and this repository's history")
    archive = subprocess.run(
        [git, "-C", str(ROOT), "archive", commit, "npu_sim"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone: {archive.stderr.decode()[:200]}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_the_benchmark_runs_on_a_checkout_older_than_counted_pools(tmp_path: Path) -> None:
    old = _checkout(OLD, tmp_path)
    assert not (old / "npu_sim" / "kv_pool.py").exists()
    # An editable install of this project must not lend the old checkout its new modules.
    result = _run_isolated(old, [*TINY, "--context=64", "--repeats=1"])
    decode: Any = result["decode_tokens_per_s"]
    prefill: Any = result["prefill"]
    assert set(decode) == {"2"} and decode["2"] > 0
    assert prefill["64"]["seconds"] > 0


def test_comparison_rows_give_per_round_ratios_and_the_sgemm_bound() -> None:
    def figures(sgemm: float, seconds: float, fraction: float, tps: float) -> Any:
        return {
            "sgemm GFLOP/s": (sgemm, True),
            "prefill 1024 s": (seconds, False),
            "prefill 1024 of sgemm": (fraction, True),
            "decode b32 tok/s": (tps, True),
        }

    ours = [figures(90, 0.2, 0.4, 1000), figures(95, 0.25, 0.3, 1200)]
    theirs = [figures(88, 0.4, 0.2, 500), figures(93, 0.3, 0.25, 400)]
    rows = {name: (a, b, ratios) for name, a, b, ratios in comparison_rows(ours, theirs)}
    assert rows["sgemm GFLOP/s"][2] == []
    assert rows["prefill 1024 s"][2] == pytest.approx([2.0, 1.2])  # baseline / this
    assert rows["decode b32 tok/s"][2] == pytest.approx([2.0, 3.0])  # this / baseline
    # At 100% of sgemm this code's prefill would take seconds * fraction: 0.08, 0.075 s.
    ideal, base, bound = rows["prefill 1024 at 100% sgemm"]
    assert ideal == pytest.approx([0.08, 0.075]) and base == [0.4, 0.3]
    assert bound == pytest.approx([5.0, 4.0])
