"""Links and storage media: what moving KV bytes between tiers costs on the modelled clock.

A `LinkSpec` is a bandwidth per direction plus a fixed latency per transfer. A reload
from a lower tier crosses two hops, the medium (DDR, an RDMA pool, an SSD, a network
file system) and the device's host link (PCIe), and is charged as one pipelined
transfer: both latencies, at the slower hop's bandwidth (`path_seconds`).

Sources, per preset, beside each figure. Where no source was found the figure is labelled
an assumption.

Charging hook (`TransferClock`, below; called by cache/transfer.py's per-tier transfer
lanes): the server builds one `TransferClock` from `TierPaths`
and the stored-to-logical byte ratio, and hands the transfer worker its bound `finish`
method as a plain callable. When a batch of blocks has moved through a tier, the worker
calls `finish(tier, stored_bytes, started, write=...)`: that charges the *logical* bytes
of the batch (under `--emulate`, the full block size, whatever fraction is stored) at the
modelled path, waits until that much time has passed since `started` (the real time
stands when the real store is slower), and adds both figures to per-tier totals for the
metrics (`tier_transfer_modelled_seconds_total{tier}` next to
`tier_transfer_wall_seconds_total{tier}`). `npu_sim` never imports `cache`; the callable
is the only coupling.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One hop: `read_bandwidth` toward the device (reloads), `write_bandwidth` away from
    it (spills), both bytes/s; `latency_seconds` is paid once per transfer (batch)."""

    name: str
    read_bandwidth: float
    write_bandwidth: float
    latency_seconds: float
    source: str

    def __post_init__(self) -> None:
        if min(self.read_bandwidth, self.write_bandwidth) <= 0 or self.latency_seconds < 0:
            raise ValueError(f"link {self.name!r}: bandwidths must be > 0, latency >= 0")

    def bandwidth(self, write: bool) -> float:
        return self.write_bandwidth if write else self.read_bandwidth


def transfer_seconds(num_bytes: float, link: LinkSpec, *, write: bool = False) -> float:
    """Modelled time to move `num_bytes` over `link`: latency + bytes / bandwidth.

    A zero-byte transfer costs nothing (no transfer happens). `write`: away from the
    device (a spill). Raises `ValueError` for negative sizes.
    """
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    if num_bytes == 0:
        return 0.0
    return link.latency_seconds + num_bytes / link.bandwidth(write)


def path_seconds(
    num_bytes: float, media: LinkSpec, host_link: LinkSpec, *, write: bool = False
) -> float:
    """Modelled time of one transfer crossing `media` and the device's `host_link`.

    Both latencies are paid; the bytes stream through both hops at once (DMA pipelining),
    so the slower hop's bandwidth sets the rate.
    """
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    if num_bytes == 0:
        return 0.0
    rate = min(media.bandwidth(write), host_link.bandwidth(write))
    return media.latency_seconds + host_link.latency_seconds + num_bytes / rate


# --- host links (device <-> host memory) ----------------------------------------------
# 910B: no source found gives the 63 GB/s of PCIe 5.0 x16 for the 910B; Atlas 800 A2
# material points to PCIe Gen4 x16, 16 GT/s x 16 lanes x 128/130 = 31.5 GB/s raw per
# direction. DMA copies reach about 80% of that on PCIe 4 hosts (the same ratio H100's
# measured D2H has to Gen5's 63 GB/s: 52.8/63 = 84%), so the preset uses 25 GB/s both
# ways. Latency: 10 us per batch (an assumption: one DMA submit and completion).
PCIE4_X16_HOST_LINK: Final = LinkSpec(
    name="pcie4-x16",
    read_bandwidth=25e9,
    write_bandwidth=25e9,
    latency_seconds=10e-6,
    source="PCIe 4.0 x16 31.5 GB/s raw, 80% achieved (assumption); issue #9",
)
# H100 SXM on PCIe Gen5 x16, measured (NVIDIA nvbandwidth issue 24): 35.2 GB/s
# host-to-device (reloads) and 52.8 GB/s device-to-host (spills).
H100_HOST_LINK: Final = LinkSpec(
    name="pcie5-x16-h100",
    read_bandwidth=35.2e9,
    write_bandwidth=52.8e9,
    latency_seconds=10e-6,
    source="nvbandwidth issue 24 (H2D 35.2, D2H 52.8 GB/s); latency assumed",
)

# --- media behind the lower tiers -----------------------------------------------------
MEDIA_PRESETS: Final = MappingProxyType(
    {
        # Host DDR5 on the device's own server: 8 channels of DDR5-4800 are ~307 GB/s, far
        # above any host link, so the host link sets the rate. Latency ~1 us (assumption).
        "local-ddr": LinkSpec(
            "local-ddr", 300e9, 300e9, 1e-6, "8ch DDR5-4800 = 307 GB/s; host link binds"
        ),
        # Mooncake transfer engine (Mooncake paper / docs): 87 GB/s over 4 x 200 Gbps RoCE
        # and 190 GB/s over 8 x 400 Gbps. Latency 20 us per batch is an assumption (RDMA
        # round trip plus a metadata lookup).
        "rdma-4x200": LinkSpec(
            "rdma-4x200", 87e9, 87e9, 20e-6, "Mooncake: 87 GB/s over 4x200 Gbps RoCE"
        ),
        "rdma-8x400": LinkSpec(
            "rdma-8x400", 190e9, 190e9, 20e-6, "Mooncake: 190 GB/s over 8x400 Gbps RoCE"
        ),
        # One PCIe 4.0 x4 NVMe SSD: Samsung 990 Pro datasheet 7,450 MB/s read, 6,900 MB/s
        # write; UCM's SSD tables imply >= 5-10 GB/s per node. 7 / 6.5 GB/s, 100 us
        # latency (typical NVMe 4 KiB read latency, ~80-100 us).
        "nvme": LinkSpec("nvme", 7e9, 6.5e9, 100e-6, "Samsung 990 Pro datasheet; UCM tables"),
        # A network file system over 10 GbE: line rate 1.25 GB/s, ~1.1 GB/s after NFS/TCP
        # overhead, ~1 ms per request. An assumption (no measured figure was found for
        # KV-cache reads), in line with SGLang issue 12809's file L3 giving no gain.
        "nfs": LinkSpec("nfs", 1.1e9, 1.1e9, 1e-3, "assumption: NFS over 10 GbE"),
    }
)
DEFAULT_DDR_MEDIA: Final = "local-ddr"
DEFAULT_FLASH_MEDIA: Final = "nvme"


def get_media(name: str) -> LinkSpec:
    """Return the media preset `name`; raise `ValueError` listing the choices if unknown."""
    try:
        return MEDIA_PRESETS[name]
    except KeyError:
        choices = ", ".join(sorted(MEDIA_PRESETS))
        raise ValueError(f"unknown media {name!r}; choose one of: {choices}") from None


@dataclass(frozen=True, slots=True)
class TierPaths:
    """The modelled cost of moving KV bytes between HBM and each lower tier."""

    host_link: LinkSpec
    ddr: LinkSpec
    flash: LinkSpec

    def seconds(self, tier: str, num_bytes: float, *, write: bool = False) -> float:
        """Modelled seconds for one transfer of `num_bytes` to/from `tier` ("ddr",
        "flash"); `ValueError` for another tier."""
        media = {"ddr": self.ddr, "flash": self.flash}.get(tier)
        if media is None:
            raise ValueError(f"no modelled path for tier {tier!r}")
        return path_seconds(num_bytes, media, self.host_link, write=write)


@dataclass(slots=True)
class TransferTotals:
    """Per-tier sums, reads and writes together: modelled vs. real seconds, logical bytes."""

    modelled_seconds: float = 0.0
    wall_seconds: float = 0.0
    logical_bytes: float = 0.0


@dataclass(slots=True)
class TransferClock:
    """Paces tier transfers to the modelled paths and keeps per-tier totals.

    logical_per_stored: logical bytes per stored byte (1 for the numpy model, ~64 under
        `--emulate` at the default fraction). pace: wait out the modelled time (False:
        only account for it).
    Thread-safe: several transfer threads may call `finish` at once.
    """

    paths: TierPaths
    logical_per_stored: float = 1.0
    pace: bool = True
    _totals: dict[str, TransferTotals] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, tier: str, stored_bytes: int, started: float, *, write: bool) -> float:
        """Charge a finished batch of `stored_bytes` that began at `started`
        (`time.perf_counter()`); with `pace`, sleep until its modelled end. Returns the
        modelled seconds. `ValueError` for a tier without a modelled path."""
        logical = stored_bytes * self.logical_per_stored
        modelled = self.paths.seconds(tier, logical, write=write)
        if self.pace:
            while (remaining := started + modelled - time.perf_counter()) > 0:
                time.sleep(remaining)
        wall = time.perf_counter() - started
        with self._lock:
            totals = self._totals.setdefault(tier, TransferTotals())
            totals.modelled_seconds += modelled
            totals.wall_seconds += wall
            totals.logical_bytes += logical
        return modelled

    def totals(self) -> dict[str, TransferTotals]:
        """A copy of the per-tier totals."""
        with self._lock:
            return {
                tier: TransferTotals(t.modelled_seconds, t.wall_seconds, t.logical_bytes)
                for tier, t in self._totals.items()
            }
