"""Float weights of a llama-style decoder, as loaded (GGUF) or drawn (seeded presets).

Arrays are float32 and oriented so that `x @ W` is the linear layer: (in_features,
out_features). Q and K use the rotate-half RoPE convention. `Model` quantises them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LayerWeights:
    attn_norm: np.ndarray  # (H,)
    wq: np.ndarray  # (H, num_heads*head_dim)   rotate-half RoPE convention (un-permuted)
    wk: np.ndarray  # (H, num_kv_heads*head_dim) rotate-half RoPE convention (un-permuted)
    wv: np.ndarray  # (H, num_kv_heads*head_dim)
    wo: np.ndarray  # (num_heads*head_dim, H)
    mlp_norm: np.ndarray  # (H,)
    w_gate: np.ndarray  # (H, I)
    w_up: np.ndarray  # (H, I)
    w_down: np.ndarray  # (I, H)


@dataclass(frozen=True, slots=True)
class LlamaWeights:
    embed: np.ndarray  # (V, H)
    layers: tuple[LayerWeights, ...]
    final_norm: np.ndarray  # (H,)
    lm_head: np.ndarray | None  # (H, V); None = tied to embed (use embed.T)
