"""Results folders: new or empty (or emptied of negspace's own files), never half-made on failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from negspace.errors import NegspaceError, arg

# What one evaluation writes into its folder (what ``overwrite`` may remove).
EVAL_OUTPUTS = (
    "metrics.json",
    "results.md",
    "results.csv",
    "scores.csv",
    "hist_*.png",
    "roc.png",
    "explanations.csv",
    "negative_space",
)


def prepare_out_dir(
    out_dir: Path, overwrite: bool, outputs: Iterable[str] = EVAL_OUTPUTS, option: str | None = None
) -> Path | None:
    """Create ``out_dir`` (or, with ``overwrite``, empty it of the ``outputs`` globs); returns the
    topmost folder this created (``None`` if none), for :func:`remove_empty_out_dir`.

    Done before any work: a folder that cannot be written, or one that would mix two runs'
    files, must not cost a run.
    """
    option = option or arg("out")
    if out_dir.exists() and not out_dir.is_dir():
        raise NegspaceError(f"{option} {out_dir} is a file; give a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise NegspaceError(
                f"{option} {out_dir} is not empty; pass {arg('overwrite')} to replace the results in "
                "it, or choose another folder."
            )
        clear_outputs(out_dir, outputs)
        return None
    missing = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NegspaceError(f"Cannot create the results folder {out_dir} ({err.strerror}).") from None
    return missing[-1] if missing else None


def clear_outputs(folder: Path, outputs: Iterable[str], folders: bool = True) -> int:
    """Remove what matches the ``outputs`` globs in ``folder`` (a run's own files, nothing else;
    ``folders=False``: files and links only); returns how many were removed."""
    removed = 0
    for pattern in outputs:
        for old in folder.glob(pattern):
            if old.is_dir() and not old.is_symlink():
                if not folders:
                    continue
                shutil.rmtree(old)
            else:
                old.unlink()
            removed += 1
    return removed


def remove_empty_out_dir(out_dir: Path, created_top: Path | None) -> None:
    """Remove ``out_dir`` and the parents up to ``created_top`` that a run created, if empty."""
    if created_top is None:
        return
    for folder in (out_dir, *out_dir.parents):
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()
        if folder == created_top:
            return


def check_save_dir(path: Path | None, overwrite: bool = False) -> None:
    """A folder to save a detector in follows ``--out``'s rule: new or empty, or (with
    ``overwrite``) a saved detector to replace; never a folder of other files."""
    if path is None:
        return
    option = arg("save_detector_to", "--save-detector")
    if path.exists() and not path.is_dir():
        raise NegspaceError(f"{option} {path} is a file; give a folder.")
    if not path.is_dir() or not any(path.iterdir()):
        return
    saved = (path / "detector.json").is_file() or (path / "config.json").is_file()
    if not saved:
        raise NegspaceError(f"{option} {path} is a folder with other files in it; give a new or empty one.")
    if not overwrite:
        raise NegspaceError(
            f"{option} {path} holds a saved detector already; pass {arg('overwrite')} to replace "
            "it, or choose another folder."
        )


def clear_saved_detector(path: Path) -> None:
    """Empty a folder :func:`check_save_dir` let through, so no file of the old detector stays."""
    if path.is_dir():
        for old in path.iterdir():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
