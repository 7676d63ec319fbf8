"""Checking a suite's data before any model loads, and opening its sets (``--limit``: a sample)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negspace.bench.suites import RunSpec, SetSpec, Suite
from negspace.data.sets import ImageSet, open_image_folder, open_openood_list
from negspace.errors import DatasetError, arg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetCheck:
    """What was found for one set: its image set, or why it cannot be used."""

    spec: SetSpec
    images: ImageSet | None
    problem: str = ""


def open_spec(spec: SetSpec, data_root: Path) -> ImageSet:
    """The images of one set under ``data_root`` (raises :class:`DatasetError` when missing)."""
    if spec.format == "openood":
        return open_openood_list(data_root / spec.path, data_root / spec.root, name=spec.name)
    if spec.format == "stem-list":
        stems = [fields[0] for fields in _fields(data_root / spec.path, 1)]
        return _listed(spec, [data_root / spec.root / spec.pattern.format(stem) for stem in stems])
    if spec.format == "cub":
        folder = data_root / spec.path
        images = dict(fields[:2] for fields in _fields(folder / "images.txt", 2))
        split = _fields(folder / "train_test_split.txt", 2)
        return _listed(spec, [folder / "images" / images[i] for i, flag, *_ in split if flag == "0" and i in images])
    folder = data_root / spec.path
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    return open_image_folder(folder, name=spec.name)


def _fields(file: Path, at_least: int) -> list[list[str]]:
    """The whitespace-separated fields of a list file's lines, each line with ``at_least`` of them."""
    if not file.is_file():
        raise DatasetError(f"{file} does not exist")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{file} cannot be read as UTF-8 text ({err})") from None
    rows = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < at_least:
            raise DatasetError(f"{file} line {lineno} has {len(fields)} field(s), {at_least} expected")
        rows.append(fields)
    return rows


def _listed(spec: SetSpec, paths: list[Path]) -> ImageSet:
    """The listed images; files that are not there are a problem of the set (not skipped later)."""
    if not paths:
        raise DatasetError("it names no image")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing):,} of the {len(paths):,} listed images are missing, e.g. {missing[0]}")
    return ImageSet(spec.name, paths)


def check_sets(suite: Suite, data_root: Path, check_counts: bool = True) -> dict[str, SetCheck]:
    """Open every set of ``suite``; a missing set or a wrong file count is a problem, not an error.

    Keyed by set name. Listing the files is all this does (no image is decoded).
    """
    checks: dict[str, SetCheck] = {}
    for spec in suite.all_sets():
        try:
            images = open_spec(spec, data_root)
        except DatasetError as err:
            checks[spec.name] = SetCheck(spec, None, f"{spec.layout()} — {str(err).rstrip('.')}")
            continue
        problem = ""
        if check_counts and len(images) != spec.count:
            problem = f"{spec.layout()} — {len(images):,} images found, {spec.count:,} expected"
        checks[spec.name] = SetCheck(spec, images, problem)
    return checks


def layout_report(suite: Suite, data_root: Path, checks: dict[str, SetCheck]) -> str:
    """One message listing every problem, with what each set should be (for the CLI's exit 2); the
    arguments it names are marked with :func:`negspace.errors.arg`."""
    bad = [c for c in checks.values() if c.problem]
    under = f"under {arg('data_root')} {data_root}"
    lines = [f"suite {suite.name}: {len(bad)} of {len(checks)} sets {under} are not as expected:"]
    lines += [f"  {c.spec.name} ({c.spec.published_as}): {c.problem}" for c in bad]
    lines.append(
        "See `negspace bench --list` for each set's layout and count; "
        f"{arg('check_counts=False', '--no-count-check')} runs with other counts."
    )
    return "\n".join(lines)


def sample_set(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """At most ``limit`` images of a set, drawn without replacement with ``seed`` (order kept)."""
    if limit is None or len(images) <= limit:
        return images
    keep = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    labels = [images.labels[i] for i in keep] if images.labels is not None else None
    return ImageSet(images.name, [images.paths[i] for i in keep], labels)


def run_sets(
    run: RunSpec, checks: dict[str, SetCheck], limit: int | None, seed: int
) -> tuple[ImageSet, list[ImageSet]]:
    """The ID set and OOD sets of one run, sampled to ``limit`` images each when given."""

    def pick(spec: SetSpec) -> ImageSet:
        images = checks[spec.name].images
        assert images is not None, f"set {spec.name} was not checked"
        return sample_set(images, limit, seed)

    return pick(run.id), [pick(spec) for spec in run.ood]
