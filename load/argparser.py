"""The argument parser of every ``tierkv-load`` command and benchmark."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, TypeVar


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments get one line naming the problem (and, for a bad choice, the
    allowed values) instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


T = TypeVar("T", int, float)

PACE_HELP = "real: a step lasts at least its modelled device time; none: as fast as the CPU"


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a one-line error otherwise)."""
    return _checked(text, int, lambda v: v >= 1, "a whole number", ">= 1")


def non_negative_float(text: str) -> float:
    """An argparse type: a number >= 0 (not NaN)."""
    return _checked(text, float, lambda v: v >= 0, "a number", ">= 0")


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 ('inf' too; not NaN)."""
    return _checked(text, float, lambda v: v > 0, "a number", "> 0")


def _checked(
    text: str, convert: Callable[[str], T], is_ok: Callable[[T], bool], kind: str, bound: str
) -> T:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind} {bound}, got {text!r}") from None
    if not is_ok(value):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value
