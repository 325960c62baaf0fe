"""What the router knows about one replica: identity (from /cache/stats and /v1/models),
its block index (from its KV events) and the load the router itself has sent it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from cache.block_hash import BlockHash, hash_full_blocks, root_hash
from cache.event_subscriber import KVEventSubscriber
from cache.layout import LAYOUT_VERSION
from cache.stats import Tier
from npu_sim.pretrained import get_tokenizer
from npu_sim.tokenizers import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class InFlight:
    """A request the router forwarded and has not seen finish."""

    num_blocks: int  # prompt + expected output, in blocks
    num_prefill_blocks: int  # prompt blocks the replica must compute (not cached)
    is_prefilling: bool = True  # until its first output token comes back (FirstTokenWatch)


@dataclass(slots=True)
class Replica:
    url: str
    model: str | None = None
    numerics_id: str | None = None
    block_size: int | None = None
    role: str = "both"  # --role of the replica: both, prefill or decode (server/pd.py)
    tokenizer: Tokenizer | None = None
    events: KVEventSubscriber | None = None
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    num_routed: int = 0

    @property
    def is_cache_aware(self) -> bool:
        """Whether prefix overlap can be computed for this replica."""
        return (
            self.events is not None
            and self.tokenizer is not None
            and self.numerics_id is not None
            and self.block_size is not None
        )

    def prefill_blocks(self) -> int:
        return sum(r.num_prefill_blocks for r in self.in_flight.values() if r.is_prefilling)

    def active_blocks(self) -> int:
        return sum(r.num_blocks for r in self.in_flight.values())

    def block_hashes(self, token_ids: list[int], cache_salt: str | None) -> list[BlockHash]:
        assert self.numerics_id is not None and self.block_size is not None
        root = root_hash(self.numerics_id, LAYOUT_VERSION, cache_salt)
        return hash_full_blocks(token_ids, self.block_size, root)

    def cached_prefix(self, hashes: list[BlockHash]) -> list[Tier]:
        """Tier of each leading block of `hashes` the replica holds (its KV events)."""
        return [] if self.events is None else self.events.prefix_tiers(hashes)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def events_endpoint(endpoint: str, replica_url: str) -> str:
    """The replica's bound endpoint as reachable from here: a wildcard host (`*`,
    0.0.0.0, ::) becomes the replica URL's host."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::", ""):
        host = urlsplit(replica_url).hostname or "127.0.0.1"
    return f"{scheme}://{host}:{port}"


async def discover(client: httpx.AsyncClient, replica: Replica, cache_dir: Path) -> None:
    """Fill in the replica's identity, tokenizer and event subscription.

    Anything missing (no /cache/stats: not tierkv; no events; a tokenizer we cannot
    load) leaves the replica routed by load only; the reason is logged.
    """
    try:
        models = (await client.get(f"{replica.url}/v1/models")).json()
        replica.model = str(models["data"][0]["id"])
        stats: dict[str, Any] = (await client.get(f"{replica.url}/cache/stats")).json()
        replica.numerics_id = str(stats["numerics_id"])
        replica.block_size = int(stats["block_size"])
        replica.role = str(stats.get("role", "both"))
        events = stats.get("kv_events")
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        logger.warning("%s: no tierkv cache identity (%s); routing it by load", replica.url, exc)
        return
    try:
        replica.tokenizer = get_tokenizer(replica.model, cache_dir.expanduser(), progress=False)
    except Exception as exc:  # unknown preset, weights not fetchable: route by load
        logger.warning(
            "%s: no tokenizer for %s (%s); routing it by load", replica.url, replica.model, exc
        )
        return
    if not events:
        logger.warning("%s publishes no KV events; routing it by load", replica.url)
        return
    replay = events.get("replay_endpoint")
    replica.events = KVEventSubscriber(
        events_endpoint(events["endpoint"], replica.url),
        None if not replay else events_endpoint(replay, replica.url),
    )
    logger.info("%s: following KV events at %s", replica.url, replica.events.endpoint)
