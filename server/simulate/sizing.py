"""What the simulator's cache holds instead of KV bytes: one fp16 element per token.

The real `CacheManager` runs over `sim_layout` (1 layer, 1 KV head of 1 element: a
16-token block is 64 bytes), and every capacity is converted so that each tier holds
exactly the number of blocks the live server would hold with the same settings (HBM
from `server.stack.hbm_num_blocks`; DDR and flash as `build_stack` sizes them, counted
in encoded blocks with their header). Transfers are charged as the live server charges
them: per stored byte of the live layout times its logical-per-stored ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache.block_format import encoded_size
from cache.layout import KVLayout
from cache.records import CacheConfig
from server.config import Settings
from server.stack import hbm_num_blocks, kv_layout, logical_block_bytes, stored_fraction


@dataclass(frozen=True, slots=True)
class SimSizing:
    layout: KVLayout
    config: CacheConfig
    logical_per_stored: float  # the lanes' charge: logical bytes per simulated stored byte
    logical_block_bytes: int
    num_blocks: dict[str, int]  # per tier


def sim_layout(settings: Settings) -> KVLayout:
    return KVLayout(
        model_id=f"sim-{kv_layout(settings).model_id}",
        num_layers=1,
        num_kv_heads=1,
        head_dim=1,
        block_size=settings.block_size,
    )


def sim_sizing(settings: Settings) -> SimSizing:
    """The simulator's layout and cache config for `settings` (`ConfigError` as the
    server's start-up for an HBM too small)."""
    live = kv_layout(settings)
    live_encoded = encoded_size(live.block_shape, live.np_dtype)
    layout = sim_layout(settings)
    sim_encoded = encoded_size(layout.block_shape, layout.np_dtype)
    fraction = stored_fraction(settings)

    def lower_blocks(capacity_bytes: int) -> int:
        return int(capacity_bytes * fraction) // live_encoded if capacity_bytes > 0 else 0

    hbm = hbm_num_blocks(settings)
    ddr = lower_blocks(settings.ddr_bytes)
    flash = lower_blocks(settings.flash_bytes)
    config = CacheConfig(
        hbm_num_blocks=hbm,
        ddr_capacity_bytes=ddr * sim_encoded,
        flash_capacity_bytes=flash * sim_encoded,
        eviction_policy=settings.eviction_policy,
        admission_policy=settings.admission_policy,
        reload_timeout_s=0.0,  # the simulator waits for every load (see the README)
    )
    logical_per_block = live_encoded / fraction  # what the live server charges per block
    return SimSizing(
        layout,
        config,
        logical_per_block / sim_encoded,
        logical_block_bytes(settings),
        {"hbm": hbm, "ddr": ddr, "flash": flash},
    )
