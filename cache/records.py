"""Records the cache manager exchanges with its callers (see `cache.manager`)."""

from __future__ import annotations

from dataclasses import dataclass

from cache.block_hash import BlockHash
from cache.stats import Tier


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Sizes and policy of the cache manager (built by the server from its settings)."""

    hbm_num_blocks: int
    ddr_capacity_bytes: int = 0  # 0 disables the DDR tier
    flash_capacity_bytes: int = 0  # 0 disables the flash tier
    eviction_policy: str = "lru"
    admission_policy: str = "always"  # see cache.policies.admission
    reload_timeout_s: float = 0.0  # a load not done by then is abandoned; 0: no deadline


@dataclass(slots=True)
class PrefixHit:
    """The longest cached prefix of a block-hash chain: HBM blocks first, then lower tiers."""

    hbm_block_ids: list[int]
    lower: list[tuple[BlockHash, Tier]]

    @property
    def num_blocks(self) -> int:
        return len(self.hbm_block_ids) + len(self.lower)


@dataclass(slots=True)
class Admission:
    """Blocks a request holds after `admit`, in sequence order.

    `block_ids`: the `num_hbm_blocks` HBM hits, then `num_loading_blocks` slots being
    filled from lower tiers (wait for the `FinishedLoad` with the admission's key before
    reading them), then the fresh blocks asked for.
    """

    block_ids: list[int]
    num_hbm_blocks: int
    num_loading_blocks: int

    @property
    def is_loading(self) -> bool:
        return self.num_loading_blocks > 0


@dataclass(slots=True)
class FinishedLoad:
    """A load finished: the first `num_loaded_blocks` reserved slots hold valid KV.

    Slots after them (a block was missing or corrupt) stay allocated to the request as
    plain blocks; their tokens must be recomputed.
    """

    key: str
    num_loaded_blocks: int
