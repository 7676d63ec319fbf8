"""Few-shot ID images ("shots"): a handful of labelled images per ID class, and their prototypes.

InterNeg and TINS (docs/methods) use ``k = 16`` labelled ID images per class: the normalised mean
of a class's image features is its *prototype*, against which negatives are checked. A shots
source is

* a **folder of class folders** (``ROOT/<class>/*.jpg``): a sub-folder is matched to a class by its
  name (exactly, or with ``_`` for spaces, case-insensitive); when no name matches but there are
  as many sub-folders as classes, the sorted folders are the classes in order (ImageNet's
  ``train/n01440764/...`` layout with the 1000 names in WordNet-ID order);
* a **list file** of ``path<TAB>class`` lines (``class`` a name or a 0-based index; paths relative
  to the file).

At most ``k`` images per class are drawn with ``seed`` (all of them when a class has fewer, which
is counted and logged); a class with none is an error naming it, since its prototype is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from negspace.data.sets import IMAGE_EXTENSIONS
from negspace.errors import DatasetError, arg
from negspace.reprs import fields_repr

log = logging.getLogger(__name__)

DEFAULT_SHOTS = 16


@dataclass
class IDShots:
    """The drawn shots: image paths with their class indices, and what was short."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int: class index of each path
    n_classes: int
    k: int
    seed: int
    fewer: dict[str, int] = field(default_factory=dict)  # class (its name, or "name (class i)") -> shots (< k)
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # a name listed twice -> its class indices

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_classes)

    def summary(self) -> dict[str, object]:
        """What ``metrics.json`` records of the shots."""
        return {
            "k": self.k,
            "seed": self.seed,
            "images": len(self.paths),
            "classes": self.n_classes,
            "classes_with_fewer": len(self.fewer),
            "fewer": dict(list(self.fewer.items())[:20]),
            "duplicate_names": self.duplicates,
        }

    def __repr__(self) -> str:
        return fields_repr(self)


def _name_key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _from_folder(root: Path, class_names: Sequence[str]) -> dict[int, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{arg('id_shots')} {root} holds no class folders (ROOT/<class>/images).")
    index = _indices_by_name(class_names)
    # a name listed twice (ImageNet's "missile", "sunglasses") gets its folder for both classes
    by_name = {c: f for f in folders for c in index.get(_name_key(f.name), ())}
    if by_name:
        unknown = [f.name for f in folders if _name_key(f.name) not in index]
        if unknown:
            log.warning(
                "--id-shots %s: %d folder(s) name no class and are ignored (e.g. %r)", root, len(unknown), unknown[0]
            )
        return {c: _images_in(folder) for c, folder in by_name.items()}
    if len(folders) == len(class_names):
        log.info(
            "--id-shots %s: no folder is named after a class; the %d sorted folders are taken as the classes "
            "in order (ImageNet's WordNet-ID layout)",
            root,
            len(folders),
        )
        return {c: _images_in(folder) for c, folder in enumerate(folders)}
    raise DatasetError(
        f"{arg('id_shots')} {root}: its {len(folders)} folders match none of the {len(class_names)} class "
        "names, and are not one per class."
    )


def _indices_by_name(class_names: Sequence[str]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        index.setdefault(_name_key(name), []).append(i)
    return index


def _from_list(file: Path, class_names: Sequence[str]) -> dict[int, list[Path]]:
    index = _indices_by_name(class_names)
    found: dict[int, list[Path]] = {}
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, tab, label = line.partition("\t")
        if not tab:
            raise DatasetError(f"{arg('id_shots')} {file} line {lineno}: expected 'path<TAB>class'.")
        label = label.strip()
        if label.isdigit() and int(label) < len(class_names):
            classes = [int(label)]
        elif _name_key(label) in index:
            classes = index[_name_key(label)]
        else:
            raise DatasetError(f"{arg('id_shots')} {file} line {lineno}: {label!r} is no class of the class list.")
        for c in classes:
            found.setdefault(c, []).append((file.parent / path.strip()).resolve())
    return found


def read_shots(source: str | Path, class_names: Sequence[str], k: int = DEFAULT_SHOTS, seed: int = 0) -> IDShots:
    """Draw at most ``k`` shots per class from ``source`` (see the module docstring).

    Raises:
        DatasetError: the source is missing or malformed, or a class has no image (one sentence).
    """
    if k < 1:
        raise DatasetError(f"{arg('shots')} {k}: expected at least one image per class.")
    root = Path(source)
    if root.is_dir():
        found = _from_folder(root, class_names)
    elif root.is_file():
        found = _from_list(root, class_names)
    else:
        raise DatasetError(
            f"{arg('id_shots')} {root} does not exist (a folder of class folders, or a path<TAB>class list)."
        )
    empty = [class_names[c] for c in range(len(class_names)) if not found.get(c)]
    if empty:
        raise DatasetError(
            f"{arg('id_shots')} {root}: {len(empty)} class(es) have no image, e.g. {empty[0]!r}; every class "
            "needs at least one for its prototype."
        )
    # a name listed twice (ImageNet's "crane", "maillot") is two classes that share its images
    duplicates = {
        class_names[indices[0]]: indices for indices in _indices_by_name(class_names).values() if len(indices) > 1
    }
    if duplicates:
        name, indices = next(iter(duplicates.items()))
        log.warning(
            "--id-shots %s: %d class name(s) are listed more than once (e.g. %r: classes %s); those "
            "classes draw their shots from the same images",
            root,
            len(duplicates),
            name,
            ", ".join(map(str, indices)),
        )
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    labels: list[int] = []
    fewer: dict[str, int] = {}
    duplicate_keys = {_name_key(name) for name in duplicates}
    for c in range(len(class_names)):
        images = found[c]
        if len(images) > k:
            images = [images[i] for i in sorted(rng.choice(len(images), size=k, replace=False))]
        elif len(images) < k:
            name = class_names[c]
            fewer[f"{name} (class {c})" if _name_key(name) in duplicate_keys else name] = len(images)
        paths += images
        labels += [c] * len(images)
    if fewer:
        log.warning(
            "--id-shots %s: %d class(es) have fewer than %d images (e.g. %r: %d); all of theirs are used",
            root,
            len(fewer),
            k,
            *next(iter(fewer.items())),
        )
    return IDShots(paths, np.asarray(labels, dtype=np.int64), len(class_names), k, seed, fewer, duplicates)


def class_prototypes(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``p_c``: the L2-normalised mean of the L2-normalised image features of class ``c``'s
    shots; ``(n_classes, D)`` float32."""
    features = np.asarray(features, dtype=np.float64)
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    sums = np.zeros((n_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"class {int(np.argmin(counts))} has no shot: its prototype is undefined")
    means = sums / counts[:, None]
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def encode_prototypes(encoder, shots: IDShots, batch_size: int = 64) -> np.ndarray:
    """The prototypes of ``shots`` with ``encoder`` (image features through its feature cache;
    unreadable shots are skipped and logged by the encoder)."""
    encoded = encoder.encode_image_files(shots.paths, batch_size=batch_size)
    kept: list[int] = []
    position = 0
    for path in encoded.paths:  # the kept files, in the order given: match them by position
        while Path(shots.paths[position]) != Path(path):
            position += 1
        kept.append(int(shots.labels[position]))
        position += 1
    labels = np.asarray(kept, dtype=np.int64)
    missing = sorted(set(range(shots.n_classes)) - set(kept))
    if missing:
        raise DatasetError(f"{arg('id_shots')}: no readable image of class {missing[0]} is left for its prototype.")
    return class_prototypes(encoded.features, labels, shots.n_classes)
