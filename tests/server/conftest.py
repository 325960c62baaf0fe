"""Fixtures for the server tests: short data dirs and live servers (see live.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings
from tests.server.live import LiveServer, run_server


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data dir: the embedded Redis socket path must stay under 107 bytes,
    which pytest's tmp_path (named after the test) does not promise."""
    path = Path(tempfile.mkdtemp(prefix="tkv-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    """Settings of a small test server. Every decode context the model keeps widened
    across steps is verified against the pool's bytes (`verify_wide_context`): a
    difference kills the engine thread, so the request gets a 503 and a test that expects
    its tokens fails loudly (tests/server/test_wide_context_check.py)."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = dict(
            data_dir=data_dir,
            pace="none",
            hbm_gb=0.05,
            ddr_gb=0.05,
            flash_gb=0.1,
            max_model_len=2048,
            verify_wide_context=True,
        )
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def server(make_settings: Callable[..., Settings]) -> Iterator[LiveServer]:
    with run_server(make_settings()) as live:
        yield live
