"""Argument types and early checks of the command line: bad input fails at parse time, or before
any model loads, with one sentence naming the option."""

from __future__ import annotations

import argparse
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
        if value < minimum or (strict and value == minimum) or value != value:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")


def fraction(text: str) -> float:
    """A number in ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
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
