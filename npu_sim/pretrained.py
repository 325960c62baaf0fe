"""One call from a preset name to what the engine needs: config, weights, tokenizer.

`load_pretrained("smollm2-135m", cache_dir)` fetches the pinned weights file if needed
(`npu_sim.weights_fetch`), loads the fp32 weights checked against the preset
(`npu_sim.llama_gguf`) and the tokenizer stored in the same file. `get_tokenizer(name,
cache_dir)` gives any preset's tokenizer: the byte tokenizer for the random-weight presets
(no download), the file's BPE tokenizer for a weighted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from npu_sim.llama_gguf import load_llama_gguf
from npu_sim.model_config import WEIGHTED_PRESETS, ModelConfig, get_model_config
from npu_sim.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, load_gguf_tokenizer
from npu_sim.weights import LlamaWeights
from npu_sim.weights_fetch import fetch_model_file


@dataclass(frozen=True, slots=True)
class Pretrained:
    """A weighted preset, loaded."""

    config: ModelConfig
    weights: LlamaWeights
    tokenizer: BPETokenizer
    path: Path  # the verified weights file


def is_pretrained(name: str) -> bool:
    """True if preset `name` has trained weights to fetch (False for random presets)."""
    return name in WEIGHTED_PRESETS


def load_pretrained(name: str, cache_dir: Path, progress: bool = True) -> Pretrained:
    """Fetch (if needed) and load weighted preset `name`.

    Raises `ValueError` for a name without weights, `FetchError` when the file cannot be
    fetched, `GGUFError` when it does not match the preset. Takes a few seconds and
    ~540 MB for smollm2-135m.
    """
    if not is_pretrained(name):
        raise ValueError(
            f"model {name!r} has no trained weights; choose: {sorted(WEIGHTED_PRESETS)}"
        )
    path = fetch_model_file(name, cache_dir, progress)
    config, weights = load_llama_gguf(path, get_model_config(name))
    return Pretrained(config, weights, load_gguf_tokenizer(path, name), path)


def get_tokenizer(name: str, cache_dir: Path, progress: bool = True) -> Tokenizer:
    """The tokenizer of preset `name`, fetching a weighted preset's file if needed."""
    if not is_pretrained(name):
        get_model_config(name)  # ValueError for an unknown name
        return ByteTokenizer()
    return load_gguf_tokenizer(fetch_model_file(name, cache_dir, progress), name)
