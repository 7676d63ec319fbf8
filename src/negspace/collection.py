"""Large image collections: which files to score, and a Parquet output that a re-run resumes.

Inputs (``negspace score SRC ...``): image folders (recursive), ``.txt`` path lists, and tables
of paths (``file.parquet`` or ``file.csv``, the column ``path`` unless ``FILE:COLUMN`` names one).
A file is one image however its path is spelt (relative, with ``..``, absolute, through a
symlink): :func:`unique_files` keeps its first spelling.
Output: a folder of Parquet parts (``part-RUNID-00000.parquet``, ...), each written whole and
renamed into place, so a run killed at any moment leaves only complete parts; a re-run skips every
path already written; a second run into the same folder at the same time is refused. Read it as
one table with ``pyarrow.dataset.dataset(folder)`` or
``pandas.read_parquet(folder)`` (``_summary.json`` and ``_skipped.csv`` beside the parts are
ignored by both, as files starting with ``_`` are).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from negspace.data.sets import open_image_folder, open_path_list
from negspace.errors import DatasetError, arg

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv")


def read_parquet(path: Path, columns: Sequence[str] | None = None, schema_only: bool = False, hint: str = "") -> Any:
    """A Parquet file's table (or only its schema); a file that is not Parquet, or damaged, is one
    :class:`DatasetError` sentence naming it, ending with ``hint`` (pyarrow raises several kinds
    of error for those)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path) if schema_only else pq.read_table(path, columns=columns)
    except Exception as err:  # noqa: BLE001 - see the docstring
        raise DatasetError(f"{path} cannot be read as Parquet ({err}){hint}.") from None


def _table_paths(spec: str) -> list[Path]:
    """The path column of a Parquet or CSV table (``FILE`` or ``FILE:COLUMN``)."""
    file, column = spec, "path"
    head, sep, tail = spec.rpartition(":")
    if sep and Path(head).suffix.lower() in TABLE_SUFFIXES and not Path(spec).is_file():
        file, column = head, tail
    path = Path(file)
    if not path.is_file():
        raise DatasetError(f"The table {path} does not exist.")
    if path.suffix.lower() == ".parquet":
        schema = read_parquet(path, schema_only=True)
        if column not in schema.names:
            raise DatasetError(
                f"The table {path} has no column {column!r} (columns: {', '.join(schema.names)}); "
                f"name one as {path}:COLUMN."
            )
        kind = schema.field(column).type
        if not _is_text(kind):
            raise DatasetError(
                f"Column {column!r} of {path} holds {kind}, not text paths; name the column of paths as {path}:COLUMN."
            )
        values = read_parquet(path, columns=[column]).column(column).to_pylist()
    else:
        import csv

        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if column not in (reader.fieldnames or []):
                    raise DatasetError(
                        f"The table {path} has no column {column!r} (columns: "
                        f"{', '.join(reader.fieldnames or [])}); name one as {path}:COLUMN."
                    )
                values = [row[column] for row in reader]
        except (UnicodeDecodeError, csv.Error) as err:
            raise DatasetError(f"The table {path} cannot be read as UTF-8 CSV ({err}).") from None
        kind = _numeric_kind([v for v in values if v], path.parent)
        if kind:
            raise DatasetError(
                f"Column {column!r} of {path} holds {kind}, not text paths; name the column of paths as {path}:COLUMN."
            )
    base = path.parent
    return [Path(v) if Path(v).is_absolute() else base / v for v in values if v]


def _is_text(kind: Any) -> bool:
    """Whether a pyarrow type holds text (plain, large, view, or dictionary-encoded)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"


def _numeric_kind(values: list[str], base: Path) -> str | None:
    """``int64`` or ``double`` when every value of a CSV column is a number and none of the first
    names a file (a column of ids or sizes given where paths were meant); else ``None``."""
    kinds = set()
    for value in values:
        for kind, parse in (("int64", int), ("double", float)):
            try:
                parse(value)
            except ValueError:
                continue
            kinds.add(kind)
            break
        else:
            return None
    if not kinds or any((base / v).exists() or Path(v).exists() for v in values[:100]):
        return None
    return "double" if "double" in kinds else "int64"


def collection_paths(specs: Sequence[str]) -> list[Path]:
    """Every image path the ``specs`` name, in order, as listed: a file named twice (or under two
    spellings) is there twice, for :func:`unique_files` to keep once and count.

    Raises:
        DatasetError: a source that does not exist or names no image.
    """
    paths: list[Path] = []
    for spec in specs:
        source = Path(spec)
        if source.is_dir():
            found = open_image_folder(source).paths
        elif source.suffix.lower() == ".txt" and source.is_file():
            found = open_path_list(source).paths
        elif Path(spec.rpartition(":")[0] or spec).suffix.lower() in TABLE_SUFFIXES:
            found = _table_paths(spec)
        else:
            raise DatasetError(f"{spec} is neither a folder, a .txt path list, nor a .parquet/.csv table of paths.")
        paths += [Path(path) for path in found]
    if not paths:
        raise DatasetError(f"{', '.join(specs)} name no image.")
    return paths


class FileKeys:
    """The canonical name of a file: its absolute path with every symlink resolved, so that
    ``a/../b/x.jpg``, ``b/x.jpg``, ``/abs/b/x.jpg`` and a link to it are one key.

    Folders are resolved once each (cached) and only the file itself is checked for a link, so
    a million paths in a few thousand folders cost about a million ``lstat`` calls.
    """

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str | Path) -> str:
        text = os.fspath(path)
        folder, name = os.path.split(text)
        if name in ("", ".", ".."):
            return os.path.realpath(text)
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder or os.curdir)
        # str, not Path: this runs once per file of a collection of millions (see the docstring)
        full = os.path.join(real, name)  # noqa: PTH118
        return os.path.realpath(full) if os.path.islink(full) else full  # noqa: PTH114


def unique_files(paths: Sequence[Path], keys: FileKeys | None = None) -> tuple[list[Path], int]:
    """``paths`` with each file once (its first spelling; see :class:`FileKeys`), and how many
    paths named a file already listed."""
    keys = keys or FileKeys()
    seen: dict[str, Path] = {}
    for path in paths:
        seen.setdefault(keys(path), path)
    return list(seen.values()), len(paths) - len(seen)


class OutputBusy(DatasetError):
    """Another process is writing the same output folder."""


class PartWriter:
    """Rows to a folder of Parquet parts, each complete on disk before the next one starts.

    Safe under crashes and concurrency:

    * a part is written under a temporary ``_`` name and renamed into place once complete, so a
      killed run leaves only whole parts (readers skip ``_`` files);
    * part names carry this run's id (``part-RUNID-00000.parquet``), so two runs never write the
      same name, whatever each saw at start;
    * :meth:`lock` holds an exclusive lock on ``_lock`` in the folder for the run: a second
      process refuses at once with :class:`OutputBusy` (the lock dies with its process, so a
      crash leaves no stale lock).
    """

    def __init__(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise DatasetError(f"{arg('out')} {folder} is a file; give a folder (the Parquet parts go in it).")
        self.folder = folder
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._next = 0
        self._lock_handle: Any = None

    def lock(self) -> None:
        """Create the folder (checked writable) and hold its lock until :meth:`close` or exit."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = (self.folder / "_lock").open("a+", encoding="utf-8")  # held open for the run
        except OSError as err:
            raise DatasetError(f"{arg('out')} {self.folder}: cannot write there ({err.strerror}).") from None
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): unique part names still keep concurrent runs apart
            pass
        except OSError:
            handle.close()
            raise OutputBusy(
                f"{arg('out')} {self.folder} is being written by another negspace run; wait for it to "
                "finish (a re-run then resumes) or choose another folder."
            ) from None
        self._lock_handle = handle
        for stale in self.folder.glob("_part-*.tmp"):  # what a killed run did not finish (we hold the lock)
            stale.unlink()

    def close(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def done(self, column: str = "path") -> set[str]:
        """The values of ``column`` in the parts already written (what a re-run skips)."""
        seen: set[str] = set()
        for part in self.parts():
            table = read_parquet(part, columns=[column], hint="; move it away and run again")
            seen.update(table.column(column).to_pylist())
        return seen

    def write(self, rows: dict[str, Any]) -> Path:
        """Write one part from columns (lists or arrays of equal length)."""
        import pyarrow as pa

        return self.write_table(pa.table(rows))

    def write_table(self, table: Any) -> Path:
        """Write one part from a pyarrow table, renamed into place once complete."""
        import pyarrow.parquet as pq

        final = self.folder / f"part-{self.run_id}-{self._next:05d}.parquet"
        # "_" first: readers of the folder (pyarrow, pandas) skip a part a killed run left unfinished
        tmp = self.folder / f"_{final.name}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(final)
        self._next += 1
        return final


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
