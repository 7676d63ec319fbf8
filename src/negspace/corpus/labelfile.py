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

from collections.abc import Sequence
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
        raise NegspaceError(f"Negative-label file {path} is not UTF-8 text (one label per line, as "
                            "'negspace mine -o' writes it).") from None
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
