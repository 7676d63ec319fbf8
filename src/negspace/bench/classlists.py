"""A run's class list: a built-in list, or the dataset's own class file under ``--data-root``."""

from __future__ import annotations

from pathlib import Path

from negspace.bench.suites import ClassSpec
from negspace.classnames import ClassList, load_class_names
from negspace.errors import DatasetError


def run_classes(spec: ClassSpec, data_root: Path) -> ClassList:
    """The class names of a run, in the dataset's label order.

    ``lines``: one name per line, underscores read as spaces (Food-101 ``meta/classes.txt``);
    ``cub``: ``N 001.Black_footed_Albatross`` lines (CUB-200-2011 ``classes.txt``); ``cars-mat``:
    the ``class_names`` of Stanford Cars' devkit ``cars_meta.mat``.

    Raises:
        DatasetError: the class file is missing or names no class.
    """
    if spec.builtin:
        return load_class_names(spec.builtin)
    file = data_root / spec.file
    if not file.is_file():
        raise DatasetError(f"the class list {file} does not exist")
    from scipy.io.matlab import MatReadError

    try:
        names = _read_names(file, spec.format)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, MatReadError) as err:
        raise DatasetError(
            f"the class list {file} cannot be read as {spec.format} ({type(err).__name__}: {err})"
        ) from None
    if not names:
        raise DatasetError(f"the class list {file} names no class")
    return ClassList(tuple(names), source=str(file))


def _read_names(file: Path, format: str) -> list[str]:
    if format == "cars-mat":
        from scipy.io import loadmat

        return [str(item[0]) for item in loadmat(file)["class_names"][0]]
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if format == "cub":
        lines = [line.split(maxsplit=1)[-1].split(".", 1)[-1] for line in lines]
    return [line.replace("_", " ") for line in lines]
