"""Compatibility alias: eviction policies live in :mod:`cache.policies.eviction`."""

from cache.policies.eviction import (
    EVICTION_POLICIES,
    EvictionPolicy,
    FifoPolicy,
    LfuPolicy,
    LruPolicy,
    make_policy,
)

__all__ = [
    "EVICTION_POLICIES",
    "EvictionPolicy",
    "FifoPolicy",
    "LfuPolicy",
    "LruPolicy",
    "make_policy",
]
