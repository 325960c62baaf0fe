"""`tierkv serve` (command-line flags generated from `Settings`, one per field),
`tierkv fetch-model` (download a weighted model's file into the model cache) and
`tierkv simulate` (`tierkv-load simulate`: see `simulate` below)."""

from __future__ import annotations

import argparse
import enum
import logging
import subprocess
import sys
import typing
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from cache.policies.admission import ADMISSION_POLICIES
from cache.policies.eviction import EVICTION_POLICIES
from npu_sim.device import DEVICE_PRESETS
from npu_sim.links import MEDIA_PRESETS
from npu_sim.model_config import (
    COST_ONLY_PRESETS,
    MODEL_PRESETS,
    WEIGHTED_PRESETS,
)
from npu_sim.weights_fetch import MODEL_SOURCES, FetchError, fetch_model_file
from server.config import LOG_LEVELS, Settings
from server.router.cli import add_route_parser, route
from server.stack import ConfigError, hbm_num_blocks

# The names a flag accepts, listed in --help (checked by Settings, which names them too).
FLAG_CHOICES: dict[str, list[str]] = {
    "model": sorted({*MODEL_PRESETS, *WEIGHTED_PRESETS}),
    "device": sorted(DEVICE_PRESETS),
    "cost_model": sorted({*MODEL_PRESETS, *WEIGHTED_PRESETS, *COST_ONLY_PRESETS}),
    "eviction_policy": sorted(EVICTION_POLICIES),
    "admission_policy": sorted(ADMISSION_POLICIES),
    "emulate": sorted(COST_ONLY_PRESETS),
    "ddr_media": sorted(MEDIA_PRESETS),
    "flash_media": sorted(MEDIA_PRESETS),
    "log_level": list(LOG_LEVELS),
}

REPEATABLE_FLAGS = frozenset({"vnpu"})


def _flag_type(annotation: object) -> tuple[typing.Callable[[str], object], list[str] | None]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if typing.get_origin(base) is list:
        return str, None
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
        choices = choices or FLAG_CHOICES.get(name)
        is_list = typing.get_origin(_non_none(field.annotation)) is list
        default = getattr(field.default, "value", field.default)
        listed = f" Choices: {', '.join(choices)}." if choices else ""
        help_text = f"{field.description}{listed} (default: {default}; env TIERKV_{name.upper()})"
        if field.annotation is bool:  # a switch: --name / --no-name
            serve.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=convert,
            nargs="+" if is_list else None,
            # --vnpu a=... --vnpu b=...: every occurrence adds (other lists: last wins).
            action="extend" if name in REPEATABLE_FLAGS else "store",
            metavar=name.upper(),
            default=argparse.SUPPRESS,
            help=help_text,
        )
    fetch = sub.add_parser(
        "fetch-model",
        help="download and verify a model's weights",
        description="Fetch a model's pinned weights file into the model cache directory "
        "(already there and verified: nothing is downloaded).",
    )
    add_route_parser(sub)
    sub.add_parser(
        "simulate",
        help="replay a workload on this server's scheduler and cache on a virtual clock",
        description="The same as `tierkv-load simulate` (try `tierkv simulate --help`).",
        add_help=False,
    )
    fetch.add_argument("name", choices=sorted(MODEL_SOURCES), help="model preset")
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache directory (default: TIERKV_MODEL_CACHE_DIR or "
        f"{Settings.model_fields['model_cache_dir'].default})",
    )
    export = sub.add_parser(
        "export-tokenizer",
        help="write the model's tokenizer as HuggingFace files",
        description="Write tokenizer.json and tokenizer_config.json of a model preset into "
        "a directory, so load tools (aiperf, guidellm, vllm bench serve) count tokens as "
        "the server does, offline. A weighted preset's file is fetched if needed.",
    )
    export.add_argument(
        "--model",
        default=Settings.model_fields["model"].default,
        metavar="MODEL",
        help=f"model preset. Choices: {', '.join(FLAG_CHOICES['model'])}. (default: %(default)s)",
    )
    export.add_argument("--out", type=Path, required=True, help="directory to write into")
    export.add_argument(
        "--max-model-len",
        type=int,
        default=Settings.model_fields["max_model_len"].default,
        help="model_max_length written to tokenizer_config.json (default: %(default)s)",
    )
    export.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache directory (default: TIERKV_MODEL_CACHE_DIR or "
        f"{Settings.model_fields['model_cache_dir'].default})",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        sys.exit(simulate(argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command == "fetch-model":
        fetch_model(args.name, args.cache_dir)
        return
    if args.command == "route":
        route(args)
        return
    if args.command == "export-tokenizer":
        export_tokenizer_files(args.model, args.out, args.max_model_len, args.cache_dir)
        return
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    except ValidationError as exc:
        sys.exit(f"tierkv: {settings_error(exc)}")
    try:
        if settings.vnpu:
            from server.vnpu.partition import check_fits

            check_fits(settings)
        else:
            hbm_num_blocks(settings)
    except ConfigError as exc:
        sys.exit(f"tierkv: {exc}")
    serve(settings)


def simulate(argv: list[str]) -> int:
    """`tierkv simulate ARGS` runs `python -m load simulate ARGS` and returns its exit code.

    The simulator's engine is `server.simulate`; its front end (workloads, traces,
    result.json, plots) is `load`'s, and `load` may import `server` but never the other
    way round, so this command hands over to it rather than importing it.
    """
    return subprocess.call([sys.executable, "-m", "load", "simulate", *argv])


def settings_error(exc: ValidationError) -> str:
    """One line for a settings error: `--flag: what is wrong` (choices named where the
    value is one of a set), no pydantic dump."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown setting"
        parts.append(f"--{loc[0].replace('_', '-')}: {message}" if loc else message)
    return "; ".join(parts)


def _non_none(annotation: object) -> object:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args and typing.get_origin(annotation) is not list else annotation


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


def export_tokenizer_files(
    model: str, out: Path, max_model_len: int, cache_dir: Path | None
) -> None:
    """`tierkv export-tokenizer`: write the preset's HF tokenizer files, print their paths."""
    from npu_sim.pretrained import get_tokenizer
    from server.tokenize import export_tokenizer

    try:
        overrides: dict[str, object] = {"model": model, "max_model_len": max_model_len}
        if cache_dir is not None:
            overrides["model_cache_dir"] = cache_dir
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        sys.exit(f"tierkv: {settings_error(exc)}")
    try:
        tokenizer = get_tokenizer(settings.model, settings.model_cache_dir.expanduser())
    except FetchError as exc:
        sys.exit(f"tierkv: {exc}")
    for path in export_tokenizer(tokenizer, out, settings.max_model_len):
        print(path)


def fetch_model(name: str, cache_dir: Path | None) -> None:
    """`tierkv fetch-model`: fetch `name` into `cache_dir` (None: the settings' default)
    and print the file's path; exit with a one-line error when fetching fails."""
    try:
        overrides = {} if cache_dir is None else {"model_cache_dir": cache_dir}
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        sys.exit(f"tierkv: {settings_error(exc)}")
    try:
        path = fetch_model_file(name, settings.model_cache_dir, progress=True)
    except FetchError as exc:
        sys.exit(f"tierkv: {exc}")
    print(path)
