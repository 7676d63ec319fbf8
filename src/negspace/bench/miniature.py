"""A miniature of a suite's data: its real folder names, list files and class files, with a few
generated images per set. For trying ``negspace bench`` without the data, and for its tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from negspace.bench.suites import ClassSpec, SetSpec, Suite

_CLASS_NAMES = ("black footed albatross", "laysan albatross", "sooty albatross")


def write_miniature(
    suite: Suite, root: Path, per_set: int | None = 3, seed: int = 0, shots: int = 1, progress: bool = False
) -> Path:
    """Write ``per_set`` images for every set of ``suite`` under ``root`` (``None``: each set's
    real count, e.g. 85,640 for ``imagenet``), laid out as the suite expects, the class files its
    runs read and ``shots`` training images per class; returns ``root``."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    sets = list(suite.all_sets())
    counts = [spec.count if per_set is None else per_set for spec in sets]
    with tqdm(total=sum(counts), desc="Writing generated images", unit="img", disable=not progress) as bar:
        for index, (spec, count) in enumerate(zip(sets, counts, strict=True)):
            _write_set(spec, root, count, rng, colour=index)
            bar.update(count)
    for run in suite.runs:
        if run.classes.file:
            _write_classes(run.classes, root)
        if run.train:
            _write_train(run, root, rng, shots)
    return root


def _write_train(run, root: Path, rng: np.random.Generator, shots: int) -> None:
    """``shots`` images per class of the run's built-in class list, in one sorted folder per class
    (as ImageNet's train/n01440764/...): the few-shot methods' ID shots."""
    from negspace.classnames import load_class_names

    for index in range(len(load_class_names(run.classes.builtin).names)):
        for shot in range(shots):
            _image(root / run.train / f"n{index:08d}" / f"shot_{shot}.jpg", rng, colour=index)


def _image(path: Path, rng: np.random.Generator, colour: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.array([(colour * 67) % 256, (colour * 131) % 256, (colour * 29) % 256], np.uint8)
    pixels = np.clip(base + rng.integers(-40, 40, (32, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def _write_set(spec: SetSpec, root: Path, n: int, rng: np.random.Generator, colour: int) -> None:
    folders = min(max(2, n // 50), 1000)  # about 50 images per class folder, as ImageNet's val
    relative = [f"c{i % folders}/{spec.name}_{i}" for i in range(n)]
    if spec.format == "folder":
        for rel in relative:
            _image(root / spec.path / f"{rel}.jpg", rng, colour)
    elif spec.format == "openood":
        lines = []
        for i, rel in enumerate(relative):
            path = f"{spec.name}/{rel}.jpg"
            _image(root / spec.root / path, rng, colour)
            lines.append(f"{path} {i % 2}")
        _write_text(root / spec.path, lines)
    elif spec.format == "stem-list":
        for rel in relative:
            _image(root / spec.root / spec.pattern.format(rel), rng, colour)
        _write_text(root / spec.path, [f"{rel} 1 1 1" for rel in relative])
    elif spec.format == "cub":
        folder = root / spec.path
        images, split = [], []
        for i in range(2 * n):  # every other image is a training image, left out
            rel = f"00{1 + i % 2}.Bird_{i % 2}/{spec.name}_{i}.jpg"
            _image(folder / "images" / rel, rng, colour)
            images.append(f"{i + 1} {rel}")
            split.append(f"{i + 1} {i % 2}")
        _write_text(folder / "images.txt", images)
        _write_text(folder / "train_test_split.txt", split)


def _write_classes(spec: ClassSpec, root: Path) -> None:
    file = root / spec.file
    file.parent.mkdir(parents=True, exist_ok=True)
    if spec.format == "cars-mat":
        from scipy.io import savemat

        names = np.empty((1, len(_CLASS_NAMES)), dtype=object)
        names[0, :] = [name.title() for name in _CLASS_NAMES]
        savemat(file, {"class_names": names})
    elif spec.format == "cub":
        _write_text(file, [f"{i} {i:03d}.{name.title().replace(' ', '_')}" for i, name in enumerate(_CLASS_NAMES, 1)])
    else:
        _write_text(file, [name.replace(" ", "_") for name in _CLASS_NAMES])


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
