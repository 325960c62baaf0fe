"""Tier transfers are charged on the modelled link and exported next to their real time."""

from __future__ import annotations

from collections.abc import Callable

from server.config import Settings
from server.stack import transfer_clock
from tests.server.live import run_server

PROMPT = "A prompt long enough for a few blocks of KV to spill and come back. " * 4


def test_ddr_spill_and_hit_are_charged_at_the_modelled_link(make_settings: Callable[..., Settings]):
    settings = make_settings(flash_gb=0)
    with run_server(settings) as server:
        server.complete(PROMPT, 4)
        server.offload("hbm")
        server.complete(PROMPT, 4)  # a DDR hit
        moved = server.metric("tierkv:tier_read_bytes_total", tier="ddr") + server.metric(
            "tierkv:tier_write_bytes_total", tier="ddr"
        )
        logical = server.metric("tierkv:tier_transfer_logical_bytes_total", tier="ddr")
        modelled = server.metric("tierkv:tier_transfer_modelled_seconds_total", tier="ddr")
        wall = server.metric("tierkv:tier_transfer_wall_seconds_total", tier="ddr")
    assert moved > 0 and logical == moved  # numpy model: logical bytes are stored bytes
    paths = transfer_clock(settings).paths
    # Two transfers at least (a write, then a read), each with the link's latency.
    assert (
        modelled
        >= paths.seconds("ddr", moved / 2, write=True) + paths.seconds("ddr", moved / 2) - 1e-12
        and modelled > 0
    )
    assert wall > 0
