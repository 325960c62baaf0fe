"""Routing policies on replicas without traffic: the baselines' choice rules."""

from __future__ import annotations

from collections import Counter

from server.router.policy import Router, RouteRequest
from server.router.replica import Replica


def _replicas(n: int) -> list[Replica]:
    return [Replica(f"http://r{i}") for i in range(n)]


def _picks(router: Router, n: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    return [router.pick(RouteRequest(None, None, 16), exclude).replica.url for _ in range(n)]


def test_random_is_seeded_and_uses_every_replica() -> None:
    first = _picks(Router(_replicas(3), "random", 4.0, seed=7), 300)
    again = _picks(Router(_replicas(3), "random", 4.0, seed=7), 300)
    other = _picks(Router(_replicas(3), "random", 4.0, seed=8), 300)
    assert first == again and first != other
    counts = Counter(first)
    assert set(counts) == {"http://r0", "http://r1", "http://r2"}
    assert min(counts.values()) > 60  # uniform: 100 each expected


def test_random_never_picks_an_excluded_replica() -> None:
    router = Router(_replicas(3), "random", 4.0)
    assert set(_picks(router, 100, frozenset({"http://r1"}))) == {"http://r0", "http://r2"}


def test_round_robin_cycles() -> None:
    router = Router(_replicas(2), "round-robin", 4.0)
    assert _picks(router, 4) == ["http://r0", "http://r1"] * 2
