"""Errors a user can act on.

Every exception derived from :class:`NegspaceError` carries one sentence meant for a person;
the command line prints that sentence (no traceback) and exits with status 2.

A sentence names what to fix the way its reader typed it: an argument or config field wrapped in
:func:`arg` reads ``data_root`` from Python (``str(err)``) and ``--data-root`` on the command line
(:meth:`NegspaceError.cli_message`).
"""

from __future__ import annotations

import re
from pathlib import Path

# Invisible separators around a named argument: "<MARK>python_name<SPLIT>--cli-option<MARK>".
_MARK, _SPLIT = "\u2063", "\u2064"
_NAMED = re.compile(f"{_MARK}([^{_MARK}{_SPLIT}]*){_SPLIT}([^{_MARK}]*){_MARK}")


def arg(name: str, option: str | None = None) -> str:
    """Name a Python argument or config field in an error message.

    Shown as ``name`` to a Python caller and as ``option`` (default: ``--name-with-dashes``) when
    the command line prints the error, e.g. ``arg("check_counts", "--no-count-check")``.
    """
    return f"{_MARK}{name}{_SPLIT}{option or '--' + name.replace('_', '-')}{_MARK}"


def python_text(message: str) -> str:
    """``message`` with every :func:`arg` shown by its Python name."""
    return _NAMED.sub(r"\1", message)


def cli_text(message: str) -> str:
    """``message`` with every :func:`arg` shown as its command-line option."""
    return _NAMED.sub(r"\2", message)


class NegspaceError(Exception):
    """Base class of the errors negspace raises for bad input or an unusable environment.

    ``str(err)`` names arguments as a Python caller passes them; :meth:`cli_message` as the
    command line's options. Build a message from another error with :attr:`message` so that its
    names keep both spellings.
    """

    @property
    def message(self) -> str:
        """The sentence with its named arguments still marked (see :func:`arg`)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return python_text(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def cli_message(self) -> str:
        """The sentence with every named argument as its command-line option."""
        return cli_text(self.message)


class WeightsUnavailableError(NegspaceError):
    """Model weights could not be found locally nor fetched from the hub."""


class DatasetError(NegspaceError):
    """An image set is missing, empty or malformed."""


class ClassNamesError(NegspaceError):
    """A class-name list is missing, empty or malformed."""


class UnreadableImageError(NegspaceError):
    """One image file could not be decoded; callers skip it and count it."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
