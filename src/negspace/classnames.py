"""ID class names: the built-in ImageNet-1k list or a text file with one name per line."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from negspace.errors import ClassNamesError
from negspace.reprs import fields_repr

log = logging.getLogger(__name__)

# ImageNet-1k and the class lists of the benchmark suites (negspace/bench/data, PROVENANCE.txt).
BUILTIN_CLASS_LISTS = ("imagenet", "imagenet-a", "imagenet-r", "imagenet-10", "imagenet-20", "oxford-pet")


@dataclass(frozen=True)
class ClassList:
    """Class names in index order, with the problems found while reading them.

    ``problems`` holds one human-readable sentence per kind of problem (stray whitespace, blank
    lines, duplicates); none of them is fatal, and every one is also logged as a warning.
    """

    names: tuple[str, ...]
    source: str
    problems: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return fields_repr(self)


def _bench_data(file: str) -> dict:
    import json
    from importlib import resources

    return json.loads((resources.files("negspace.bench") / "data" / file).read_text(encoding="utf-8"))


def _imagenet_names() -> tuple[str, ...]:
    # The 1000 names CLIP's authors curated for zero-shot ImageNet, copied from open_clip into the
    # package data so that reading them never imports open_clip and torch (PROVENANCE.txt).
    return tuple(_bench_data("imagenet_classnames.json")["names"])


def _line_list(numbers: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def duplicate_report(names: tuple[str, ...] | list[str], lines: list[int] | None = None) -> list[str]:
    """One sentence per name that appears more than once (case-insensitive), with its lines.

    ``lines[k]`` is the line number of ``names[k]`` (default: ``k + 1``).
    """
    lines = lines if lines is not None else list(range(1, len(names) + 1))
    where: dict[str, list[int]] = defaultdict(list)
    first_spelling: dict[str, str] = {}
    for name, line in zip(names, lines, strict=True):
        first_spelling.setdefault(name.casefold(), name)
        where[name.casefold()].append(line)
    return [
        f"class name {first_spelling[key]!r} appears {len(found)} times (lines {_line_list(found)})"
        for key, found in where.items()
        if len(found) > 1
    ]


def parse_class_lines(text: str, source: str) -> ClassList:
    """Parse one class name per line: strip whitespace, skip blank lines, report duplicates.

    Duplicates are kept (a class's index is its position, and dropping one would shift every
    later label) but reported, as are blank lines and stray whitespace.
    """
    names: list[str] = []
    name_lines: list[int] = []
    padded: list[int] = []
    blank: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        name = " ".join(raw.split())
        if not name:
            blank.append(number)
            continue
        if name != raw:
            padded.append(number)
        names.append(name)
        name_lines.append(number)
    if not names:
        raise ClassNamesError(f"The class list {source} contains no class names.")
    problems: list[str] = []
    if padded:
        problems.append(f"stray whitespace was removed on {len(padded)} line(s): {_line_list(padded)}")
    if blank:
        problems.append(f"{len(blank)} blank line(s) were skipped: {_line_list(blank)}")
    problems.extend(duplicate_report(names, name_lines))
    for problem in problems:
        log.warning("%s: %s", source, problem)
    return ClassList(names=tuple(names), source=source, problems=tuple(problems))


def builtin_class_names(name: str) -> tuple[str, ...]:
    """The names of a built-in list (see :data:`BUILTIN_CLASS_LISTS`), in index order."""
    if name == "imagenet":
        return _imagenet_names()
    if name in ("imagenet-a", "imagenet-r"):  # 200-class subsets, as indices into ImageNet-1k
        names = _imagenet_names()
        return tuple(names[i] for i in _bench_data(f"imagenet_{name[-1]}_indices.json")["indices"])
    if name in ("imagenet-10", "imagenet-20"):
        return tuple(entry["name"] for entry in _bench_data("imagenet10_20.json")[name])
    if name == "oxford-pet":
        return tuple(_bench_data("oxford_pet.json")["names"])
    raise ClassNamesError(f"{name!r} is not a built-in class list ({', '.join(BUILTIN_CLASS_LISTS)}).")


def load_class_names(spec: str | Path) -> ClassList:
    """Class names from a built-in list name (:data:`BUILTIN_CLASS_LISTS`) or a UTF-8 text file,
    one name per line."""
    name = str(spec).lower()
    if name in BUILTIN_CLASS_LISTS:
        names = builtin_class_names(name)
        # CLIP's curated ImageNet list itself repeats two names; they are distinct classes, kept as is.
        problems = tuple(duplicate_report(names))
        for problem in problems:
            log.debug("%s: %s (as in the shipped list; kept)", name, problem)
        return ClassList(names=names, source=name, problems=problems)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(BUILTIN_CLASS_LISTS)
        raise ClassNamesError(f"Class list {str(spec)!r} is neither a file nor a built-in list ({known}).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ClassNamesError(
            f"The class list {path} is not valid UTF-8 text ({err.reason} at byte {err.start})."
        ) from None
    return parse_class_lines(text, source=str(path))
