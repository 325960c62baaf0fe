"""Simulated accelerator specs and their calibration factors.

A `DeviceSpec` carries the numbers the cost model needs: peak figures from datasheets
(or cores x clock where no datasheet exists) and *efficiency factors* measured by
others on real hardware, so that modelled step times are what a serving stack actually
gets, not the unreachable peak. Nothing here talks to real hardware. Every figure has its
source beside it; the calibration against published end-to-end results is
`python -m npu_sim.calibrate` (README, "Device clock and emulation").

`host_link` is the device's own PCIe link to host memory; the media behind the lower
tiers (local DDR, remote DDR over RDMA, NVMe, a network file system) are in
`npu_sim.links`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from npu_sim.links import H100_HOST_LINK, PCIE4_X16_HOST_LINK, LinkSpec

GiB: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One accelerator: peak figures, measured efficiencies and its host link.

    peak_flops: dense fp16/bf16 matmul throughput, FLOP/s (no 2:4 sparsity).
    hbm_bandwidth: device memory bandwidth, bytes/s.
    gemm_efficiency: best fraction of `peak_flops` a large GEMM reaches; caps the MFU.
    prefill_mfu_long: model FLOPs utilisation of a step with >= MFU_LONG_TOKENS tokens.
    prefill_mfu_short: MFU of a step with <= MFU_SHORT_TOKENS tokens (see cost_model).
    decode_bandwidth_efficiency: fraction of `hbm_bandwidth` a step's weight and KV
        reads achieve (memory-bound decode).
    step_overhead_seconds: fixed host work per step (scheduling, launch, sampling) that
        does not overlap the device's work.
    host_link: the device <-> host DDR link (PCIe), used by the local-DDR media preset.
    """

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    gemm_efficiency: float
    prefill_mfu_long: float
    prefill_mfu_short: float
    decode_bandwidth_efficiency: float
    step_overhead_seconds: float
    host_link: LinkSpec
    ai_cores: int = 0  # informational (Ascend AI cores / NVIDIA SMs)

    def __post_init__(self) -> None:
        if min(self.hbm_bytes, self.peak_flops, self.hbm_bandwidth) <= 0:
            raise ValueError(f"device {self.name!r}: every capacity and rate must be > 0")
        factors = (
            self.gemm_efficiency,
            self.prefill_mfu_long,
            self.prefill_mfu_short,
            self.decode_bandwidth_efficiency,
        )
        if not all(0 < f <= 1 for f in factors):
            raise ValueError(f"device {self.name!r}: efficiency factors must be in (0, 1]")
        if not self.prefill_mfu_short <= self.prefill_mfu_long <= self.gemm_efficiency:
            raise ValueError(
                f"device {self.name!r}: need prefill_mfu_short <= prefill_mfu_long "
                "<= gemm_efficiency"
            )
        if self.step_overhead_seconds < 0:
            raise ValueError(f"device {self.name!r}: step_overhead_seconds must be >= 0")

    @property
    def effective_flops(self) -> float:
        """Best sustained GEMM throughput: peak x gemm_efficiency."""
        return self.peak_flops * self.gemm_efficiency

    @property
    def effective_hbm_bandwidth(self) -> float:
        """Sustained read bandwidth of a memory-bound step."""
        return self.hbm_bandwidth * self.decode_bandwidth_efficiency


# --- Ascend 910B family --------------------------------------------------------------
# Peak fp16 = AI cores x 1.8 GHz x 8,192 FLOP/cycle (Da Vinci cube 16x16x16 MACs x 2):
# 24 cores -> 353.9 TFLOPS (910B2), 20 -> 294.9 (910B3), 20 at 1.5 GHz -> 245.7 (910B4).
# Marketing labels are "376T" (B2) and "313T" (B3). HBM: 64 / 64 / 32 GB at 1.6 / 1.6 /
# 0.8 TB/s (Atlas 800T/800I A2 spec sheets as reported in issue #9).
# Efficiencies (issue #9's sources): GEMM 89% of peak on a 910B2 (315 TFLOPS measured);
# decode 45-55% of HBM bandwidth (MindIE and vllm-ascend figures) -> 0.50; prefill MFU
# ~0.4-0.6 at >= 1k tokens -> 0.50 and ~0.2 for short prompts. Step overhead: vLLM once
# measured CPU work at 62% of step time, but v1 engines (and vllm-ascend's) overlap most
# of it with the device; what is left is modelled as 1.0 ms per step, an assumption (the
# Qwen3-8B nightly target lands at -9% with it, -5% with none: see calibrate.py).
# Host link: PCIe Gen4 x16 (see npu_sim.links.PCIE4_X16_HOST_LINK for why not Gen5).
_ASCEND_COMMON = dict(
    gemm_efficiency=0.89,
    prefill_mfu_long=0.50,
    prefill_mfu_short=0.20,
    decode_bandwidth_efficiency=0.50,
    step_overhead_seconds=1.0e-3,
    host_link=PCIE4_X16_HOST_LINK,
)
_910B2 = DeviceSpec(
    name="ascend-910b2",
    hbm_bytes=64 * GiB,
    peak_flops=353.9e12,
    hbm_bandwidth=1.6e12,
    ai_cores=24,
    **_ASCEND_COMMON,  # type: ignore[arg-type]
)
_910B3 = DeviceSpec(
    name="ascend-910b3",
    hbm_bytes=64 * GiB,
    peak_flops=294.9e12,
    hbm_bandwidth=1.6e12,
    ai_cores=20,
    **_ASCEND_COMMON,  # type: ignore[arg-type]
)
_910B4 = DeviceSpec(
    name="ascend-910b4",
    hbm_bytes=32 * GiB,
    peak_flops=245.7e12,
    hbm_bandwidth=0.8e12,
    ai_cores=20,
    **_ASCEND_COMMON,  # type: ignore[arg-type]
)

# --- Ascend 310P (Atlas 300I Pro inference card) --------------------------------------
# Datasheet figures: 8 AI cores, 24 GB LPDDR4X at 204.8 GB/s, 70 TFLOPS fp16 (140 TOPS
# int8). No published serving efficiencies: the 910B's factors are reused (an
# assumption). It is here for its vNPU templates (npu_sim.vnpu: vir01/02/04).
_310P = DeviceSpec(
    name="ascend-310p",
    hbm_bytes=24 * GiB,
    peak_flops=70e12,
    hbm_bandwidth=204.8e9,
    ai_cores=8,
    **_ASCEND_COMMON,  # type: ignore[arg-type]
)

# --- NVIDIA H100 SXM5 ----------------------------------------------------------------
# NVIDIA H100 datasheet: 80 GB HBM3 at 3.35 TB/s, 989 TFLOPS dense bf16/fp16 (1,979 with
# 2:4 sparsity), 132 SMs. GEMM reaches 80% of peak (789 TFLOPS); decode ~60% of HBM
# bandwidth (vLLM CI latency test, Llama-3.1-8B batch 8: 997.5 ms for 128 tokens).
# Overhead: vLLM v1 with CUDA graphs keeps decode host work mostly hidden; 0.2 ms per step
# is an assumption, small against a ~8 ms decode step. Host link: measured copies
# (npu_sim.links.H100_HOST_LINK).
_H100 = DeviceSpec(
    name="h100-sxm",
    hbm_bytes=80 * GiB,
    peak_flops=989e12,
    hbm_bandwidth=3.35e12,
    gemm_efficiency=0.80,
    prefill_mfu_long=0.50,
    prefill_mfu_short=0.20,
    decode_bandwidth_efficiency=0.60,
    step_overhead_seconds=0.2e-3,
    host_link=H100_HOST_LINK,
    ai_cores=132,
)

# `ascend-910b` is the 910B3: the SKU the earlier preset described (313T, 64 GB) and the
# one most reported in Atlas 800 A2 servers. Decode-bound results are the same on a 910B2
# (same HBM); prefill is 20% faster there.
DEVICE_ALIASES: Final = MappingProxyType({"ascend-910b": "ascend-910b3"})

DEVICE_PRESETS: Final = MappingProxyType(
    {d.name: d for d in (_910B2, _910B3, _910B4, _310P, _H100)}
    | {alias: _910B3 for alias in DEVICE_ALIASES}
)


def get_device(name: str) -> DeviceSpec:
    """Return the preset called `name`; raise `ValueError` listing the choices if unknown."""
    try:
        return DEVICE_PRESETS[name]
    except KeyError:
        choices = ", ".join(sorted(DEVICE_PRESETS))
        raise ValueError(f"unknown device {name!r}; choose one of: {choices}") from None
