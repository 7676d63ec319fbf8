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
    if spec.format == "cars-mat":
        from scipy.io import loadmat

        names = [str(item[0]) for item in loadmat(file)["class_names"][0]]
    else:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if spec.format == "cub":
            lines = [line.split(maxsplit=1)[-1].split(".", 1)[-1] for line in lines]
        names = [line.replace("_", " ") for line in lines]
    if not names:
        raise DatasetError(f"the class list {file} names no class")
    return ClassList(tuple(names), source=str(file))
