"""Simulated NPU: a tiny llama in numpy over a paged KV pool, plus a roofline device model.

Never imports `server` or `cache` (see docs/architecture.md).
"""

from npu_sim import tokenizer
from npu_sim.blas import blas_core_name, limit_blas_threads
from npu_sim.cost_model import StepCost, step_cost
from npu_sim.device import DEVICE_PRESETS, DeviceSpec, get_device
from npu_sim.executor import Executor, Pace, StepResult, StepSequence
from npu_sim.links import LinkSpec, get_media, transfer_seconds
from npu_sim.model import Model, SeqChunk
from npu_sim.model_config import DEFAULT_MODEL, MODEL_PRESETS, ModelConfig, get_model_config
from npu_sim.ops import QuantizedLinear, attend, linear
from npu_sim.sampling import Sampler, SamplingParams

__all__ = [
    "DEFAULT_MODEL",
    "DEVICE_PRESETS",
    "MODEL_PRESETS",
    "DeviceSpec",
    "LinkSpec",
    "Executor",
    "Model",
    "ModelConfig",
    "Pace",
    "QuantizedLinear",
    "Sampler",
    "SamplingParams",
    "SeqChunk",
    "StepCost",
    "StepResult",
    "StepSequence",
    "attend",
    "blas_core_name",
    "get_device",
    "get_media",
    "get_model_config",
    "limit_blas_threads",
    "linear",
    "step_cost",
    "tokenizer",
    "transfer_seconds",
]
