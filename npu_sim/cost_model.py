"""Calibrated roofline cost model: how long a model step takes on a `DeviceSpec`.

Work (unchanged from the plain roofline):

* FLOPs: each new token multiplies through every layer's linear weights, 2 FLOPs per
  weight (multiply + add); the lm_head runs once per chunk (only the last token's logits
  are needed); the embedding is a lookup (no FLOPs). Attention adds QK^T and PV for every
  new token over its own causal context: 2 * 2 * num_heads * head_dim FLOPs per
  (query, key) pair per layer. Norms, RoPE, softmax and activations are ignored.
* Bytes: all weights (fp16, `ModelConfig.weight_bytes`) are read once per step whatever
  the batch size, except the embedding table, of which only the step's rows are read;
  each chunk reads the K/V of its whole context (including the tokens it just wrote, as
  paged attention does) and writes the K/V of its new tokens.

Time, with the device's measured efficiency factors (see `npu_sim.device`):

    compute_seconds = flops / (peak_flops * mfu(num_tokens))
    memory_seconds  = bytes / (hbm_bandwidth * decode_bandwidth_efficiency)
    seconds         = step_overhead_seconds + max(compute_seconds, memory_seconds)

`mfu(n)` is the model FLOPs utilisation of a step pushing `n` tokens: `prefill_mfu_short`
up to MFU_SHORT_TOKENS, `prefill_mfu_long` from MFU_LONG_TOKENS on, linear in log2(n)
between (published prefill MFU is ~0.2 for short prompts and ~0.4-0.6 at >= 1k tokens;
the GEMM ceiling `gemm_efficiency` bounds both). Compute and memory overlap; the fixed
host overhead does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from npu_sim.device import DeviceSpec
from npu_sim.model_config import WEIGHT_BYTES_PER_PARAM, ModelConfig

MFU_SHORT_TOKENS: Final = 128
MFU_LONG_TOKENS: Final = 1024


@dataclass(frozen=True, slots=True)
class StepCost:
    """Modelled work and duration of one step."""

    flops: float
    bytes: float
    compute_seconds: float
    memory_seconds: float
    overhead_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        if self.flops == 0.0 and self.bytes == 0.0:
            return 0.0
        return self.overhead_seconds + max(self.compute_seconds, self.memory_seconds)

    @property
    def is_compute_bound(self) -> bool:
        return self.compute_seconds >= self.memory_seconds


def mfu(device: DeviceSpec, num_tokens: int) -> float:
    """Model FLOPs utilisation of a step of `num_tokens` tokens on `device` (see module)."""
    lo, hi = device.prefill_mfu_short, device.prefill_mfu_long
    if num_tokens <= MFU_SHORT_TOKENS:
        return lo
    if num_tokens >= MFU_LONG_TOKENS:
        return hi
    frac = math.log2(num_tokens / MFU_SHORT_TOKENS) / math.log2(MFU_LONG_TOKENS / MFU_SHORT_TOKENS)
    return lo + (hi - lo) * frac


def step_work(model: ModelConfig, chunks: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """(FLOPs, bytes) of one step running `chunks`, each `(num_new_tokens, context_after)`.

    Requires 1 <= num_new_tokens <= context_len_after (`ValueError` otherwise).
    """
    if not chunks:
        return 0.0, 0.0
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
    embed_bytes = model.vocab_size * h * WEIGHT_BYTES_PER_PARAM
    num_tokens = sum(num_new for num_new, _ in chunks)
    # A tied head is the embedding matrix itself: the lm_head reads it whole.
    untied_embed = 0 if model.tied_embeddings else embed_bytes
    weights_read = model.weight_bytes - untied_embed + num_tokens * h * WEIGHT_BYTES_PER_PARAM
    return flops, float(weights_read) + kv_bytes


def step_cost(
    model: ModelConfig, device: DeviceSpec, chunks: Sequence[tuple[int, int]]
) -> StepCost:
    """Cost of one step running `chunks`, each `(num_new_tokens, context_len_after)`.

    Requires 1 <= num_new_tokens <= context_len_after (`ValueError` otherwise). An empty
    step costs nothing (no weights are read, no overhead is paid).
    """
    if not chunks:
        return StepCost(flops=0.0, bytes=0.0, compute_seconds=0.0, memory_seconds=0.0)
    flops, num_bytes = step_work(model, chunks)
    num_tokens = sum(num_new for num_new, _ in chunks)
    return StepCost(
        flops=flops,
        bytes=num_bytes,
        compute_seconds=flops / (device.peak_flops * mfu(device, num_tokens)),
        memory_seconds=num_bytes / device.effective_hbm_bandwidth,
        overhead_seconds=device.step_overhead_seconds,
    )
