"""Simulated accelerator specs used by the roofline cost model.

A `DeviceSpec` only carries the handful of numbers the cost model needs; nothing here
talks to real hardware. Figures are public peak numbers (marketing/datasheet values), so
modelled times are optimistic lower bounds, which is what a roofline is.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

GiB: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Peak capabilities of one accelerator. All bandwidths are bytes per second."""

    name: str
    hbm_bytes: int  # device memory capacity
    peak_fp16_flops: float  # dense fp16 matmul throughput, FLOP/s
    hbm_bandwidth: float  # device memory bandwidth
    host_link_bandwidth: float  # HBM <-> host DDR, one direction
    flash_bandwidth: float  # host NVMe SSD sequential read

    def __post_init__(self) -> None:
        numbers = (
            self.hbm_bytes,
            self.peak_fp16_flops,
            self.hbm_bandwidth,
            self.host_link_bandwidth,
            self.flash_bandwidth,
        )
        if any(x <= 0 for x in numbers):
            raise ValueError(f"device {self.name!r}: every capacity and rate must be > 0")


# PCIe 5.0 x16: 32 GT/s * 16 lanes * 128/130 encoding / 8 bits ~= 63 GB/s per direction
# (PCI-SIG PCIe 5.0 base spec; NVIDIA quotes "128 GB/s" for H100 = both directions).
_PCIE5_X16: Final = 63e9
# A current PCIe 4.0 x4 NVMe SSD (e.g. Samsung 990 Pro datasheet: 7,450 MB/s seq. read).
_NVME_SSD: Final = 7e9

DEVICE_PRESETS: Final = MappingProxyType(
    {
        # Huawei Ascend 910B: 64 GB HBM2e, ~1.6 TB/s, ~313 TFLOPS fp16 (figures of the
        # 910B3 SKU as reported for Atlas 800T A2 servers; Huawei publishes no single
        # datasheet and public numbers vary by SKU, 280-376 TFLOPS). PCIe 5.0 x16 host link.
        "ascend-910b": DeviceSpec(
            name="ascend-910b",
            hbm_bytes=64 * GiB,
            peak_fp16_flops=313e12,
            hbm_bandwidth=1.6e12,
            host_link_bandwidth=_PCIE5_X16,
            flash_bandwidth=_NVME_SSD,
        ),
        # NVIDIA H100 SXM5 (NVIDIA H100 Tensor Core GPU datasheet): 80 GB HBM3, 3.35 TB/s,
        # FP16 tensor core 1,979 TFLOPS with 2:4 sparsity = 989 TFLOPS dense; PCIe Gen5 x16.
        "h100-sxm": DeviceSpec(
            name="h100-sxm",
            hbm_bytes=80 * GiB,
            peak_fp16_flops=989e12,
            hbm_bandwidth=3.35e12,
            host_link_bandwidth=_PCIE5_X16,
            flash_bandwidth=_NVME_SSD,
        ),
    }
)


def get_device(name: str) -> DeviceSpec:
    """Return the preset called `name`; raise `ValueError` listing the choices if unknown."""
    try:
        return DEVICE_PRESETS[name]
    except KeyError:
        choices = ", ".join(sorted(DEVICE_PRESETS))
        raise ValueError(f"unknown device {name!r}; choose one of: {choices}") from None
