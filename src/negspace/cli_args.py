"""Argument types and early checks of the command line: bad input fails at parse time, or before
any model loads, with one sentence naming the option."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from negspace.errors import NegspaceError

MAX_SEED = 2**32 - 1  # numpy and torch both accept every seed up to here


def _number(kind: type, minimum: float, strict: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a number >= 0")


def _interval(low: float, high: float, low_open: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (low < value if low_open else low <= value) or not value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


fraction = _interval(0.0, 1.0, False, "a number between 0 and 1")
positive_fraction = _interval(0.0, 1.0, True, "a number in (0, 1]")
percent = _interval(0.0, 100.0, False, "a percentage between 0 and 100")


def finite_float(text: str) -> float:
    """Any finite number (a score threshold): NaN and infinities would flag nothing or everything."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def seed(text: str) -> int:
    """A seed every method accepts: an integer in ``[0, 2**32 - 1]``."""
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer between 0 and {MAX_SEED}, got {text}")
    return value


def check_output_file(path: Path, option: str) -> None:
    """Fail now, not after the work, when ``path`` cannot be written as a file."""
    if path.is_dir():
        raise NegspaceError(f"{option} {path} is a folder; give a file name.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise NegspaceError(f"{option} {path}: the folder {parent} does not exist.")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".negspace-write-test-"):
            pass
    except OSError as err:
        raise NegspaceError(f"{option} {path}: cannot write in {parent} ({err.strerror}).") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise NegspaceError(f"{option} {path} exists and cannot be overwritten.")


def corpus(text: str) -> str:
    """``--corpus``/``--tanl-corpus``: a WordNet selection, or a corpus file of one's own."""
    from negspace.corpus.custom import is_corpus_spec
    from negspace.corpus.wordnet import SELECTIONS

    if not is_corpus_spec(text):
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(SELECTIONS)} or a corpus file (one word per line, or word<TAB>noun|adj), "
            f"got {text!r}, which is neither")
    return text
