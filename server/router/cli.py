"""`tierkv route`: flags and start-up of the router (see server.router.config)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from server.router.config import POLICIES, RouterConfig


def add_route_parser(sub: Any) -> None:
    route = sub.add_parser(
        "route",
        help="start a cache-aware router in front of tierkv replicas",
        description="OpenAI pass-through that picks a replica per request by prefix overlap "
        "(learned from the replicas' KV events) and load.",
    )
    defaults = RouterConfig(replicas=("unused",))
    route.add_argument(
        "--replica",
        action="append",
        required=True,
        metavar="URL",
        help="a replica's base URL (repeat for each replica)",
    )
    route.add_argument("--host", default=defaults.host, help="address to listen on")
    route.add_argument("--port", type=int, default=defaults.port, help="TCP port")
    route.add_argument(
        "--policy",
        choices=POLICIES,
        default=defaults.policy,
        help="how to pick a replica (default: %(default)s)",
    )
    route.add_argument(
        "--overlap-weight",
        type=float,
        default=defaults.overlap_weight,
        help="weight of prefill blocks against decode blocks in the "
        "cache-aware cost (default: %(default)s)",
    )
    route.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random policy")
    route.add_argument(
        "--startup-timeout",
        type=float,
        default=defaults.startup_timeout_s,
        help="seconds to wait for every replica's /health",
    )
    route.add_argument(
        "--model-cache-dir",
        type=Path,
        default=defaults.model_cache_dir,
        help="where a weighted model's tokenizer file is kept",
    )
    route.add_argument("--log-level", default="info", help="log level")


def route(args: argparse.Namespace) -> None:
    try:
        config = RouterConfig(
            replicas=tuple(args.replica),
            host=args.host,
            port=args.port,
            policy=args.policy,
            overlap_weight=args.overlap_weight,
            seed=args.seed,
            startup_timeout_s=args.startup_timeout,
            model_cache_dir=args.model_cache_dir,
        )
    except ValueError as exc:
        sys.exit(f"tierkv route: {exc}")
    from server.router.app import build_router_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        build_router_app(config),
        host=config.host,
        port=config.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
