"""`npu_sim/bench.py --baseline`: the same file times an older checkout of the model."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from npu_sim.bench import _run_isolated

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
