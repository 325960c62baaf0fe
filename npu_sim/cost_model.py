"""Roofline cost model: how long a model step would take on a `DeviceSpec`.

Assumptions (a roofline is an optimistic lower bound, not a simulator of kernels):

* FLOPs: each new token multiplies through every layer's linear weights, 2 FLOPs per
  weight (multiply + add); the lm_head runs once per chunk (only the last token's logits
  are needed); the embedding is a lookup (no FLOPs). Attention adds QK^T and PV for every
  new token over its own causal context: 2 * 2 * num_heads * head_dim FLOPs per
  (query, key) pair per layer. Norms, RoPE, softmax and activations are ignored.
* Bytes: all weights (fp16, `ModelConfig.weight_bytes`) are read once per step whatever
  the batch size; each chunk reads the K/V of its whole context (including the tokens it
  just wrote, as paged attention does) and writes the K/V of its new tokens. Activations
  are assumed to stay on chip.
* Time: compute and memory overlap perfectly, so a step takes
  max(flops / peak_fp16_flops, bytes / hbm_bandwidth). No launch overheads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from npu_sim.device import DeviceSpec
from npu_sim.model_config import WEIGHT_BYTES_PER_PARAM, ModelConfig


@dataclass(frozen=True, slots=True)
class StepCost:
    """Modelled work and duration of one step."""

    flops: float
    bytes: float
    compute_seconds: float
    memory_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def is_compute_bound(self) -> bool:
        return self.compute_seconds >= self.memory_seconds


def step_cost(
    model: ModelConfig, device: DeviceSpec, chunks: Sequence[tuple[int, int]]
) -> StepCost:
    """Cost of one step running `chunks`, each `(num_new_tokens, context_len_after)`.

    Requires 1 <= num_new_tokens <= context_len_after (`ValueError` otherwise). An empty
    step costs nothing (no weights are read).
    """
    if not chunks:
        return StepCost(flops=0.0, bytes=0.0, compute_seconds=0.0, memory_seconds=0.0)
    h = model.hidden_size
    layer_linear_params = model.num_params_per_layer - 2 * h  # minus the norm weights
    lm_head_params = h * model.vocab_size
    attn_flops_per_pair = 4 * model.num_heads * model.head_dim * model.num_layers
    flops = 0.0
    kv_bytes = 0.0
    for num_new, ctx_after in chunks:
        if not 1 <= num_new <= ctx_after:
            raise ValueError(f"bad chunk ({num_new}, {ctx_after}): need 1 <= new <= context")
        flops += 2.0 * (model.num_layers * layer_linear_params * num_new + lm_head_params)
        # New tokens sit at positions ctx_after - num_new .. ctx_after - 1 and attend to
        # position + 1 keys each: sum_{j = ctx_after - num_new + 1}^{ctx_after} j pairs.
        pairs = num_new * (2 * ctx_after - num_new + 1) / 2
        flops += attn_flops_per_pair * pairs
        kv_bytes += (ctx_after + num_new) * model.kv_bytes_per_token
    # Every weight is read once per step, except the embedding table: a lookup reads only
    # the rows of the step's tokens.
    embed_bytes = model.vocab_size * h * WEIGHT_BYTES_PER_PARAM
    num_tokens = sum(num_new for num_new, _ in chunks)
    weights_read = model.weight_bytes - embed_bytes + num_tokens * h * WEIGHT_BYTES_PER_PARAM
    num_bytes = float(weights_read) + kv_bytes
    return StepCost(
        flops=flops,
        bytes=num_bytes,
        compute_seconds=flops / device.peak_fp16_flops,
        memory_seconds=num_bytes / device.hbm_bandwidth,
    )


def transfer_seconds(num_bytes: float, bandwidth: float) -> float:
    """Time to move `num_bytes` over a link of `bandwidth` bytes/s (no latency term)."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    return num_bytes / bandwidth
