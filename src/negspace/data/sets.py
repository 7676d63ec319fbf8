"""Image sets: which files make up an ID or OOD set, opened before any model loads.

Three sources are understood:

* an image **folder**, searched recursively;
* a plain **path list** (``.txt``, one path per line, relative to the list's own folder);
* an **OpenOOD image list** (``relative/path label`` lines) together with its image root.

Opening a set only lists and checks paths; pixels are read later with
:func:`negspace.data.load_rgb`, which turns every bad file into a skipped, counted entry.

Missing files named by a list are *kept* (with a warning giving their count): the reader then
reports each one as unreadable, so one stale line does not stop a long run, and the results still
show what was missing.  A list in which *no* file exists is almost certainly a wrong root or list
format, so that is a :class:`~negspace.errors.DatasetError` at once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from negspace.errors import DatasetError
from negspace.reprs import fields_repr

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "default_set_name",
    "is_feature_file",
    "open_image_folder",
    "open_image_set",
    "open_openood_list",
    "open_path_list",
    "parse_named_set",
]

logger = logging.getLogger(__name__)

#: File suffixes (lower-case) taken as images when a folder is searched.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_LIST_SUFFIXES = frozenset({".txt"})
_FEATURE_SUFFIXES = frozenset({".npy"})
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_EXAMPLES = 5
_OPENOOD_LINE_RE = re.compile(r"\S+\s+-?\d+")


@dataclass
class ImageSet:
    """A named, ordered collection of image files, with optional integer labels.

    Attributes:
        name: short name used in tables and file names (``[A-Za-z0-9_.-]+`` when derived here).
        paths: image files in a deterministic order; files named by a list may not exist.
        labels: one label per path (OpenOOD lists; ``-1`` where a line had none), else ``None``.
    """

    name: str
    paths: list[Path]
    labels: list[int] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.paths):
            raise ValueError(f"ImageSet {self.name!r} has {len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return fields_repr(self)


def is_feature_file(spec: str | Path) -> bool:
    """True when ``spec`` names a precomputed feature file (``.npy``) instead of images."""
    return Path(str(spec)).suffix.lower() in _FEATURE_SUFFIXES


def open_image_set(spec: str | Path, name: str | None = None) -> ImageSet:
    """Open an image set from a folder, a ``.txt`` path list, or ``LIST.txt:ROOT`` (OpenOOD list).

    ``spec`` is split at its last ``:`` only when the whole of it is not an existing path and the
    part before that ``:`` is an existing file, so paths that merely contain a colon still work.
    A relative ``ROOT`` is taken from the working directory (as OpenOOD's ``data_dir`` is).
    ``name`` defaults to the folder or list name (see :func:`default_set_name`).

    Raises:
        DatasetError: the path does not exist, is of an unknown kind, or holds no images.
    """
    text = str(spec)
    if not text.strip():
        raise DatasetError("An image set path is empty.")
    path = Path(text).expanduser()
    if path.is_dir():
        return open_image_folder(path, name=name)
    if path.is_file():
        if path.suffix.lower() in _LIST_SUFFIXES:
            return open_path_list(path, name=name)
        if is_feature_file(path):
            raise DatasetError(
                f"{path} is a precomputed feature file, not an image set; pass it where feature files are accepted."
            )
        raise DatasetError(
            f"{path} is neither a folder of images, a .txt path list, nor LIST.txt:ROOT "
            "(an OpenOOD image list with its image root)."
        )
    head, sep, tail = text.rpartition(":")
    if sep and head and Path(head).expanduser().is_file():
        if not tail.strip():
            raise DatasetError(f"The image root after ':' in {text!r} is empty; use LIST.txt:ROOT.")
        return open_openood_list(Path(head).expanduser(), Path(tail).expanduser(), name=name)
    hint = ""
    if "=" in text:  # e.g. --ood ../a=b: a NAME cannot hold a path separator, so it was read as a path
        hint = (
            " (it was read as one path: in NAME=PATH the NAME may hold only letters, digits and "
            "_ . -, e.g. --ood a=../b)"
        )
    raise DatasetError(f"The image set {text} does not exist{hint}.")


def open_image_folder(root: str | Path, name: str | None = None) -> ImageSet:
    """List the image files under ``root``, recursively, in a deterministic order.

    * Only files whose suffix is in :data:`IMAGE_EXTENSIONS` (any case) are taken.
    * Files and folders whose name starts with ``.`` are skipped (``.git``, ``.DS_Store``, ...).
    * Symbolic links are followed, but each real folder is entered once, so link cycles end.
      A dangling link with an image suffix is kept: it is reported as unreadable later.
    * Order: by path relative to ``root`` as a POSIX string, independent of the file system.
    * Paths are ``root / relative`` (``root`` as given, with ``~`` expanded).

    Raises:
        DatasetError: ``root`` is missing, not a folder, or holds no image files.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"The image folder {root} does not exist.")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder.")
    relative = sorted(_walk_images(root))
    if not relative:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(
            f"No image files found in {root} (searched recursively for {exts}, any case; "
            "hidden files and folders are skipped)."
        )
    paths = [root / rel for rel in relative]
    set_name = name if name is not None else default_set_name(root)
    logger.info("Image set %r: %d images in folder %s", set_name, len(paths), root)
    return ImageSet(name=set_name, paths=paths)


def open_path_list(file: str | Path, name: str | None = None) -> ImageSet:
    """Read a plain list of image paths, one per line.

    Relative paths are taken relative to the folder holding the list; ``~`` is expanded.  Blank
    lines and lines starting with ``#`` are ignored; each other line (stripped of surrounding
    whitespace) is one path, so paths may contain spaces and ``#``.  No suffix filter is applied.
    Missing files are kept and counted in a warning (see the module docstring).

    Raises:
        DatasetError: the list is missing or unreadable, names no paths, or none of them exists.
    """
    file = Path(file).expanduser()
    base = file.parent
    paths = [_resolve_entry(entry, base) for _, entry in _list_entries(file)]
    if not paths:
        raise DatasetError(f"The path list {file} names no images (only blank lines or comments).")
    _check_listed(paths, file)
    set_name = name if name is not None else default_set_name(file)
    logger.info("Image set %r: %d images listed in %s", set_name, len(paths), file)
    return ImageSet(name=set_name, paths=paths)


def open_openood_list(list_file: str | Path, root: str | Path, name: str | None = None) -> ImageSet:
    """Read an OpenOOD image list: ``relative/path label`` lines, paths relative to ``root``.

    The label is the last whitespace-separated token when it is an integer; a line holding only
    a path gets label ``-1``.  Blank lines and ``#`` comments are ignored.  Missing files are
    kept and counted in a warning (see the module docstring).

    Raises:
        DatasetError: the list or root is missing, a line's label is not an integer, the list
            names no images, or none of the listed files exists.
    """
    list_file = Path(list_file).expanduser()
    root = Path(root).expanduser()
    entries = _list_entries(list_file)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"The image root {root} of the OpenOOD list {list_file} {what}.")
    paths: list[Path] = []
    labels: list[int] = []
    for lineno, entry in entries:
        rel, label = _split_openood_line(entry, root, list_file, lineno)
        paths.append(_resolve_entry(rel, root))
        labels.append(label)
    if not paths:
        raise DatasetError(f"The OpenOOD list {list_file} names no images.")
    _check_listed(paths, list_file)
    set_name = name if name is not None else default_set_name(list_file)
    logger.info("Image set %r: %d images listed in %s under %s", set_name, len(paths), list_file, root)
    return ImageSet(name=set_name, paths=paths, labels=labels)


def parse_named_set(arg: str) -> tuple[str, str]:
    """Split a command-line set argument ``NAME=PATH`` (or a bare ``PATH``) into (name, path).

    ``NAME`` must match ``[A-Za-z0-9_.-]+``.  The text before the first ``=`` is read as a name
    unless it contains a path separator, so ``/data/run=3/images`` is a bare path; write a bare
    relative path containing ``=`` as ``./run=3``.  A bare path gets its name from
    :func:`default_set_name`.  The path is not checked here (:func:`open_image_set` does that).

    Raises:
        DatasetError: empty argument, empty name or path, or a name with other characters.
    """
    text = arg.strip()
    if not text:
        raise DatasetError("An image set argument is empty; expected NAME=PATH or PATH.")
    head, sep, tail = text.partition("=")
    if sep and "/" not in head and os.sep not in head:
        name, path = head.strip(), tail.strip()
        if not name:
            raise DatasetError(f"The set name before '=' in {arg!r} is empty; expected NAME=PATH.")
        if not _NAME_RE.fullmatch(name):
            raise DatasetError(f"The set name {name!r} in {arg!r} may only use letters, digits, '_', '.' and '-'.")
        if not path:
            raise DatasetError(f"The path after '=' in {arg!r} is empty; expected NAME=PATH.")
        return name, path
    return default_set_name(text), text


def default_set_name(spec: str | Path) -> str:
    """A set name derived from a spec: the folder name, the list's stem, or LIST's stem for
    ``LIST.txt:ROOT``; characters outside ``[A-Za-z0-9_.-]`` become ``_``.

    Raises:
        DatasetError: no name can be derived (e.g. the file-system root).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists():
        head, sep, _ = text.rpartition(":")
        if sep and head and Path(head).expanduser().is_file():
            path = Path(head).expanduser()
    if path.name in ("", ".", ".."):
        path = path.resolve()
    file_like = path.is_file() or path.suffix.lower() in _LIST_SUFFIXES | _FEATURE_SUFFIXES
    stem = path.stem if file_like else path.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_")
    if not name:
        raise DatasetError(f"Cannot derive a set name from {text!r}; give one as NAME=PATH.")
    return name


# --- helpers ---------------------------------------------------------------------------------


def _walk_images(root: Path) -> Iterator[str]:
    """Yield POSIX paths, relative to ``root``, of non-hidden image files below it."""
    seen: set[tuple[int, int]] = set()
    # onerror: an unreadable sub-folder is logged, not fatal; the rest of the set is usable.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_log_walk_error):
        try:
            st = Path(dirpath).stat()
        except OSError as exc:
            _log_walk_error(exc)
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # reached again through a symlink: skip (ends cycles, avoids duplicates)
            dirnames[:] = []
            continue
        seen.add(key)
        # Sorted, in-place: a deterministic walk decides deterministically which of two routes
        # to the same real folder is kept.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for fname in filenames:
            if fname.startswith(".") or Path(fname).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            yield (rel_dir / fname).as_posix()


def _log_walk_error(exc: OSError) -> None:
    logger.warning("Skipping unreadable folder %s: %s", exc.filename, exc.strerror or exc)


def _list_entries(file: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank, non-comment lines of a list."""
    if not file.exists():
        raise DatasetError(f"The image list {file} does not exist.")
    if not file.is_file():
        raise DatasetError(f"The image list {file} is not a file.")
    try:
        # utf-8-sig: lists written by Windows tools often start with a byte-order mark.
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"The image list {file} is not UTF-8 text ({exc.reason}).") from exc
    except OSError as exc:
        reason = exc.strerror or exc
        raise DatasetError(f"The image list {file} cannot be read ({reason}).") from exc
    entries = ((n, line.strip()) for n, line in enumerate(text.splitlines(), start=1))
    return [(n, entry) for n, entry in entries if entry and not entry.startswith("#")]


def _resolve_entry(entry: str, base: Path) -> Path:
    path = Path(entry).expanduser()
    return path if path.is_absolute() else base / path


def _split_openood_line(entry: str, root: Path, list_file: Path, lineno: int) -> tuple[str, int]:
    """Split ``path label`` into (path, label); a lone path gets label -1."""
    parts = entry.rsplit(None, 1)
    if len(parts) == 1:
        return entry, -1
    rel, token = parts
    try:
        return rel, int(token)
    except ValueError:
        pass
    # Not an integer tail: accept the whole line as a path only if such a file exists
    # (a path with spaces); otherwise it is a malformed label.
    if _resolve_entry(entry, root).exists():
        return entry, -1
    raise DatasetError(
        f"Line {lineno} of the OpenOOD list {list_file} has label {token!r}, "
        "which is not an integer (expected 'relative/path label')."
    )


def _check_listed(paths: Sequence[Path], source: Path) -> None:
    """Warn about listed files that do not exist; fail when none exists."""
    missing = [p for p in paths if not p.exists()]
    if not missing:
        return
    examples = ", ".join(str(p) for p in missing[:_MAX_EXAMPLES])
    if len(missing) == len(paths):
        hint = ""
        if source.suffix.lower() in _LIST_SUFFIXES and _looks_like_openood(source):
            hint = "; it looks like an OpenOOD list, so give it as LIST.txt:ROOT"
        raise DatasetError(f"None of the {len(paths)} files listed in {source} exists (e.g. {examples}){hint}.")
    logger.warning(
        "%d of %d files listed in %s do not exist and will be reported as unreadable (e.g. %s)",
        len(missing),
        len(paths),
        source,
        examples,
    )


def _looks_like_openood(file: Path) -> bool:
    """True when the list's first entry has the ``path integer`` form of an OpenOOD list."""
    entries = _list_entries(file)
    return bool(entries) and bool(_OPENOOD_LINE_RE.fullmatch(entries[0][1]))
