"""Shared fixtures for the npu_sim tests: the real tiny-llama preset, fresh KV pools, and
the real SmolLM2-135M file (fetched once per session; CI can reach PyPI, so a failed
fetch fails these tests loudly instead of skipping them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from npu_sim.llama_gguf import load_llama_gguf
from npu_sim.model import Model
from npu_sim.model_config import ModelConfig, get_model_config
from npu_sim.tokenizers import BPETokenizer, load_gguf_tokenizer
from npu_sim.weights import LlamaWeights
from npu_sim.weights_fetch import fetch_model_file
from tests.npu_sim.pools import (
    BLOCK_SIZE,
    POOL_KINDS,
    KVPoolFactory,
    Pool,
    PoolFactory,
    PoolKind,
)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return get_model_config("tiny-llama")


@pytest.fixture(scope="session")
def model(tiny_config: ModelConfig) -> Model:
    return Model(tiny_config)


@pytest.fixture
def new_pool(model: Model) -> PoolFactory:
    """Make a KV pool for `model`, filled with NaN so reading an unwritten slot shows up."""

    def make(num_blocks: int = 64, block_size: int = BLOCK_SIZE) -> np.ndarray:
        shape = model.kv_pool_shape(num_blocks, block_size)
        return np.full(shape, np.nan, dtype=np.dtype(model.config.kv_dtype))

    return make


@pytest.fixture(params=POOL_KINDS, ids=lambda kind: kind.name)
def pool_kind(request: pytest.FixtureRequest) -> PoolKind:
    """Each pool kind a decode test runs on: a bare array, and a counted pool whose kept
    decode contexts are verified every step (see `PoolKind`)."""
    kind: PoolKind = request.param
    return kind


@pytest.fixture
def kv_model(pool_kind: PoolKind, model: Model, tiny_config: ModelConfig) -> Model:
    """tiny-llama for `pool_kind`: the shared model on a bare array; on a counted pool a
    fresh one (its kept contexts are this test's alone) that verifies them."""
    return pool_kind.model(tiny_config) if pool_kind.is_counted else model


@pytest.fixture
def new_kv_pool(pool_kind: PoolKind, kv_model: Model) -> KVPoolFactory:
    """Make a NaN-filled KV pool of `pool_kind` for `kv_model` (as `new_pool`)."""

    def make(num_blocks: int = 64, block_size: int = BLOCK_SIZE) -> Pool:
        return pool_kind.new_pool(kv_model, num_blocks, block_size, fill=np.nan)

    return make


SMOLLM = "smollm2-135m"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Where tests keep fetched weights: TIERKV_TEST_MODEL_CACHE or ~/.cache/tierkv."""
    return Path(os.environ.get("TIERKV_TEST_MODEL_CACHE", "~/.cache/tierkv")).expanduser()


@pytest.fixture(scope="session")
def smollm_path(model_cache_dir: Path) -> Path:
    """The verified SmolLM2-135M GGUF (fetched on first use)."""
    return fetch_model_file(SMOLLM, model_cache_dir, progress=False)


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_path: Path) -> BPETokenizer:
    return load_gguf_tokenizer(smollm_path, SMOLLM)


@pytest.fixture(scope="session")
def smollm(smollm_path: Path) -> tuple[ModelConfig, LlamaWeights]:
    """Config and fp32 weights (~540 MB; loaded once per session)."""
    return load_llama_gguf(smollm_path, get_model_config(SMOLLM))
