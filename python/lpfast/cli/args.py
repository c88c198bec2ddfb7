"""Checks of command-line arguments that run before any work: thread counts, numbers in a
range, and output paths that must be writable (a missing directory found after minutes of
compression throws the work away)."""

from __future__ import annotations

import math
import os

from .arrays import CliError


def check_threads(n: int) -> None:
    """``--threads``: 0 (the default count) or a positive number of threads."""
    if n < 0:
        raise CliError(f"--threads: expected a number of threads >= 1 (0: the default), got {n}")


def check_range(value: float, option: str, low: float, high: float) -> None:
    """A number option in [low, high] (NaN refused)."""
    if not (math.isfinite(value) and low <= value <= high):
        raise CliError(f"{option}: expected a number in [{low:g}, {high:g}], got {value:g}")


def check_writable(path: str, option: str) -> None:
    """``path`` can be created or replaced: not a directory, its directory exists and is
    writable. Raises CliError naming ``option`` and the path."""
    if os.path.isdir(path):
        raise CliError(f"{option}: {path} is a directory, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{option}: {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{option}: {path}: directory {folder} is not writable")


def check_input_file(path: str, option: str) -> None:
    """``path`` is an existing regular file."""
    if os.path.isdir(path):
        raise CliError(f"{option}: {path} is a directory, expected a file")
    if not os.path.isfile(path):
        raise CliError(f"{option}: {path}: no such file")
