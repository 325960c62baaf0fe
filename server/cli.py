"""`tierkv serve`: command-line flags generated from `Settings`, one per field."""

from __future__ import annotations

import argparse
import enum
import logging
import sys
import typing
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from server.config import Settings
from server.stack import ConfigError, hbm_num_blocks


def _flag_type(annotation: object) -> tuple[typing.Callable[[str], object], list[str] | None]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return str, [m.value for m in base]
    if base in (int, float, Path):
        return base, None
    return str, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierkv", description="tierkv serving server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="start the OpenAI-compatible server",
        description="Every flag can also be set as an environment variable TIERKV_<NAME>.",
    )
    for name, field in Settings.model_fields.items():
        convert, choices = _flag_type(field.annotation)
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=convert,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"{field.description} (default: {field.default}; env TIERKV_{name.upper()})",
        )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    except ValidationError as exc:
        sys.exit(f"tierkv: invalid settings:\n{exc}")
    try:
        hbm_num_blocks(settings)
    except ConfigError as exc:
        sys.exit(f"tierkv: {exc}")
    serve(settings)


def serve(settings: Settings) -> None:
    """Run the server until interrupted."""
    from server.app import build_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
