"""Preset name -> config, weights and tokenizer, downloading only for weighted presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from npu_sim.model_config import get_model_config
from npu_sim.pretrained import get_tokenizer, is_pretrained, load_pretrained
from npu_sim.tokenizers import BPETokenizer, ByteTokenizer


def test_random_presets_need_no_files(tmp_path: Path) -> None:
    cache = tmp_path / "never-created"
    assert not is_pretrained("tiny-llama") and is_pretrained("smollm2-135m")
    assert isinstance(get_tokenizer("tiny-llama", cache), ByteTokenizer)
    with pytest.raises(ValueError, match="unknown model"):
        get_tokenizer("gpt-5", cache)
    with pytest.raises(ValueError, match="no trained weights"):
        load_pretrained("small-llama", cache)
    assert not cache.exists()


def test_load_smollm(model_cache_dir: Path, smollm_path: Path) -> None:
    tokenizer = get_tokenizer("smollm2-135m", model_cache_dir, progress=False)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.name == "smollm2-135m"
    loaded = load_pretrained("smollm2-135m", model_cache_dir, progress=False)
    assert loaded.path == smollm_path
    assert loaded.config is get_model_config("smollm2-135m")
    assert loaded.tokenizer.vocab_size == loaded.config.vocab_size == loaded.weights.embed.shape[0]
