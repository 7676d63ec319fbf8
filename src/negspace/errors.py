"""Errors a user can act on.

Every exception derived from :class:`NegspaceError` carries one sentence meant for a person;
the command line prints that sentence (no traceback) and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class NegspaceError(Exception):
    """Base class of the errors negspace raises for bad input or an unusable environment."""


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
