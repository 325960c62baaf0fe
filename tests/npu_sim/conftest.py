"""Shared fixtures for the npu_sim tests: the real tiny-llama preset and fresh KV pools."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.model import Model
from npu_sim.model_config import ModelConfig, get_model_config
from tests.npu_sim.pools import BLOCK_SIZE, PoolFactory


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
