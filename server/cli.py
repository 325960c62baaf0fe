"""`tierkv serve` (command-line flags generated from `Settings`, one per field) and
`tierkv fetch-model` (download a weighted model's file into the model cache)."""

from __future__ import annotations

import argparse
import enum
import logging
import sys
import typing
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from npu_sim.weights_fetch import MODEL_SOURCES, FetchError, fetch_model_file
from server.config import Settings
from server.router.cli import add_route_parser, route
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
    fetch = sub.add_parser(
        "fetch-model",
        help="download and verify a model's weights",
        description="Fetch a model's pinned weights file into the model cache directory "
        "(already there and verified: nothing is downloaded).",
    )
    add_route_parser(sub)
    fetch.add_argument("name", choices=sorted(MODEL_SOURCES), help="model preset")
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache directory (default: TIERKV_MODEL_CACHE_DIR or "
        f"{Settings.model_fields['model_cache_dir'].default})",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "fetch-model":
        fetch_model(args.name, args.cache_dir)
        return
    if args.command == "route":
        route(args)
        return
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


def fetch_model(name: str, cache_dir: Path | None) -> None:
    """`tierkv fetch-model`: fetch `name` into `cache_dir` (None: the settings' default)
    and print the file's path; exit with a one-line error when fetching fails."""
    try:
        overrides = {} if cache_dir is None else {"model_cache_dir": cache_dir}
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        sys.exit(f"tierkv: invalid settings:\n{exc}")
    try:
        path = fetch_model_file(name, settings.model_cache_dir, progress=True)
    except FetchError as exc:
        sys.exit(f"tierkv: {exc}")
    print(path)
