"""Live servers for the load tests: the bare SSE app (always) and tierkv itself."""

from collections.abc import Iterator

import pytest

from load.bench._servers import ManagedServer, bare_sse_server, tierkv_server


@pytest.fixture(scope="session")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServer]:
    log = tmp_path_factory.mktemp("bare") / "bare.log"
    with bare_sse_server(log) as server:
        yield server


@pytest.fixture(scope="session")
def tierkv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServer]:
    """A tierkv server with --pace none, shared by the session."""
    data_dir = tmp_path_factory.mktemp("tierkv")
    with tierkv_server(
        data_dir, "--pace", "none", "--verify-wide-context", startup_timeout_s=120
    ) as server:
        yield server
