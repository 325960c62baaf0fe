"""Link and media presets: each transfer's charge is latency + bytes / bandwidth."""

from __future__ import annotations

import time

import pytest

from npu_sim.device import get_device
from npu_sim.links import (
    MEDIA_PRESETS,
    TierPaths,
    TransferClock,
    get_media,
    path_seconds,
    transfer_seconds,
)

NPU = get_device("ascend-910b")


def test_transfer_seconds_is_latency_plus_bytes_over_bandwidth() -> None:
    nvme = get_media("nvme")
    assert transfer_seconds(7e9, nvme) == pytest.approx(nvme.latency_seconds + 1.0)
    assert transfer_seconds(6.5e9, nvme, write=True) == pytest.approx(nvme.latency_seconds + 1.0)
    assert transfer_seconds(0, nvme) == 0.0
    with pytest.raises(ValueError):
        transfer_seconds(-1, nvme)


def test_path_runs_at_the_slower_hop_and_pays_both_latencies() -> None:
    host = NPU.host_link
    latency = host.latency_seconds
    rdma = get_media("rdma-8x400")  # faster than PCIe 4: the host link binds
    assert path_seconds(25e9, rdma, host) == pytest.approx(rdma.latency_seconds + latency + 1.0)
    nfs = get_media("nfs")  # slower than PCIe: the medium binds
    assert path_seconds(1.1e9, nfs, host) == pytest.approx(nfs.latency_seconds + latency + 1.0)
    h100 = get_device("h100-sxm").host_link
    ddr = get_media("local-ddr")
    assert path_seconds(35.2e9, ddr, h100) == pytest.approx(ddr.latency_seconds + latency + 1.0)
    assert path_seconds(52.8e9, ddr, h100, write=True) == pytest.approx(
        ddr.latency_seconds + latency + 1.0
    )


def test_published_media_figures() -> None:
    assert get_media("rdma-4x200").read_bandwidth == 87e9
    assert get_media("rdma-8x400").read_bandwidth == 190e9
    assert 5e9 <= get_media("nvme").read_bandwidth <= 10e9
    assert get_media("nfs").read_bandwidth < get_media("nvme").read_bandwidth
    assert all(m.source for m in MEDIA_PRESETS.values())
    with pytest.raises(ValueError, match="local-ddr.*nvme"):
        get_media("tape")


def test_tier_paths_charge_a_4k_token_llama_hit() -> None:
    paths = TierPaths(NPU.host_link, get_media("local-ddr"), get_media("nvme"))
    hit = 4096 * 128 * 1024  # 512 MiB of llama-3-8b KV
    assert paths.seconds("ddr", hit) == pytest.approx(
        hit / 25e9 + NPU.host_link.latency_seconds + 1e-6
    )
    assert paths.seconds("flash", hit) == pytest.approx(
        hit / 7e9 + NPU.host_link.latency_seconds + 100e-6
    )
    with pytest.raises(ValueError):
        paths.seconds("hbm", hit)


def test_transfer_clock_charges_logical_bytes_and_never_ends_early() -> None:
    paths = TierPaths(NPU.host_link, get_media("local-ddr"), get_media("nfs"))
    clock = TransferClock(paths, logical_per_stored=64.0)
    started = time.perf_counter()
    modelled = clock.finish("flash", 1 << 20, started, write=False)  # 64 MiB logical over NFS
    assert modelled == pytest.approx(paths.seconds("flash", 64 << 20))
    assert time.perf_counter() - started >= modelled  # the modelled time was waited out
    unpaced = TransferClock(paths, pace=False)
    unpaced.finish("ddr", 4096, time.perf_counter(), write=True)
    totals = clock.totals()["flash"]
    assert totals.logical_bytes == 64 << 20 and totals.modelled_seconds == modelled
    assert totals.wall_seconds >= modelled
    assert unpaced.totals()["ddr"].modelled_seconds == paths.seconds("ddr", 4096, write=True)
    with pytest.raises(ValueError):
        clock.finish("hbm", 1, time.perf_counter(), write=False)
