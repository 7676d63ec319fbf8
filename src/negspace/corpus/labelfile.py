"""The negative-label file written by ``negspace mine`` and read by ``negspace eval --negatives``.

Plain text, one label per line, in two sections so each part gets its own prompt::

    # negspace negative labels (model=..., corpus=neglabel, ...)
    # [nouns]
    wind tunnel
    ...
    # [adjectives]
    gilded
    ...

Lines before any section header are nouns; other ``#`` lines are comments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from negspace.errors import NegspaceError

NOUN_HEADER = "# [nouns]"
ADJECTIVE_HEADER = "# [adjectives]"


def write_label_file(path: Path, nouns: Sequence[str], adjectives: Sequence[str], comment: str = "") -> None:
    """Write ``nouns`` and ``adjectives`` in the sectioned format."""
    lines = [f"# negspace negative labels{f' ({comment})' if comment else ''}", NOUN_HEADER, *nouns]
    lines += [ADJECTIVE_HEADER, *adjectives]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_label_file(path: Path) -> tuple[list[str], list[str]]:
    """Read ``(nouns, adjectives)`` from a label file; an empty file is an error."""
    if path.is_dir():
        raise NegspaceError(f"Negative-label file {path} is a folder; give the file 'negspace mine -o' wrote.")
    if not path.is_file():
        raise NegspaceError(f"Negative-label file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NegspaceError(
            f"Negative-label file {path} is not UTF-8 text (one label per line, as 'negspace mine -o' writes it)."
        ) from None
    nouns: list[str] = []
    adjectives: list[str] = []
    current = nouns
    for raw in text.splitlines():
        line = raw.strip()
        if line == NOUN_HEADER:
            current = nouns
        elif line == ADJECTIVE_HEADER:
            current = adjectives
        elif line and not line.startswith("#"):
            current.append(line)
    if not nouns and not adjectives:
        raise NegspaceError(f"Negative-label file {path} contains no labels.")
    return nouns, adjectives


def read_label_file_settings(path: Path) -> dict | None:
    """The mining settings ``negspace mine`` wrote in the file's first line (model, classes, ...),
    or ``None`` for a file without them (written by hand)."""
    first = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    prefix = "# negspace negative labels ("
    if not (first.startswith(prefix) and first.endswith(")")):
        return None
    try:
        settings = json.loads(first[len(prefix) : -1])
    except ValueError:
        return None
    return settings if isinstance(settings, dict) else None


@dataclass
class CleanedLabels:
    """Labels of a file with ID class names and duplicates removed, and what was removed."""

    nouns: list[str]
    adjectives: list[str]
    id_names_removed: list[str] = field(default_factory=list)
    duplicates_removed: list[str] = field(default_factory=list)


def clean_labels(nouns: Sequence[str], adjectives: Sequence[str], class_names: Sequence[str]) -> CleanedLabels:
    """Drop labels equal to an ID class name, and repeats (both case-insensitive, first kept):
    an ID name is no negative, and a repeated label weighs twice in its group."""
    id_keys = {c.strip().casefold() for c in class_names}
    seen: set[str] = set()
    out = CleanedLabels([], [])
    for part, kept in ((nouns, out.nouns), (adjectives, out.adjectives)):
        for label in part:
            key = label.strip().casefold()
            if key in id_keys:
                out.id_names_removed.append(label)
            elif key in seen:
                out.duplicates_removed.append(label)
            else:
                seen.add(key)
                kept.append(label)
    return out
