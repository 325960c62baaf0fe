"""The argument parser of every ``tierkv-load`` command and benchmark."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments get one line naming the problem (and, for a bad choice, the
    allowed values) instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


PACE_HELP = "real: a step lasts at least its modelled device time; none: as fast as the CPU"
