"""The router's settings: `tierkv route --replica URL ... --port P --policy NAME`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

POLICIES = ("cache-aware", "least-loaded", "round-robin", "random")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Flags of `tierkv route` (see the README's router section)."""

    replicas: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    policy: str = "cache-aware"
    overlap_weight: float = 4.0  # Dynamo's overlap_score_weight (see README: 1.0 lost hits)
    startup_timeout_s: float = 120.0  # wait this long for every replica's /health
    request_timeout_s: float = 600.0
    seed: int = 0  # of the `random` policy
    model_cache_dir: Path = field(default_factory=lambda: Path("~/.cache/tierkv"))

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ValueError("give at least one --replica URL")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose: {', '.join(POLICIES)}")
        if self.overlap_weight < 0:
            raise ValueError("overlap-weight must be >= 0")
