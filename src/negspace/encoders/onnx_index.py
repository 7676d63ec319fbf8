"""The image index of the ONNX exports: what lets a process without torch find and trust the
image tower of a model (see :mod:`negspace.encoders.onnx_images`).

Each load of the ONNX backend with torch (:func:`negspace.encoders.onnx_backend.load_onnx`) writes
one entry per model spec, weights fingerprint and preprocessing under ``CACHE/onnx-images/``:
the export's folder, the image transform as an
:class:`~negspace.encoders.image_recipe.ImageRecipe` (``null`` where no recipe reproduces the
torch transform exactly: that model's images need torch), the feature width, and the torch
model's features of a seeded probe input. The entry's key also holds the versions of the
libraries that made the transform and the export, so an upgrade writes a fresh entry.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negspace.cache import make_key
from negspace.encoders.image_recipe import ImageRecipe

__all__ = [
    "EXPORTS_FOLDER",
    "IMAGE_FILE",
    "PROBE_TOLERANCE",
    "ImageIndexEntry",
    "image_index_path",
    "probe_input",
    "read_image_index",
    "relative_distance",
    "write_image_index",
]

logger = logging.getLogger(__name__)

#: Bumped when the entry's content changes, so older entries are not read.
INDEX_FORMAT = 1
EXPORTS_FOLDER = "onnx"  # CACHE/onnx/KEY/: the exports (onnx_backend.onnx_folder)
IMAGE_FILE = "image.onnx"  # the image tower's file in an export folder
# Relative distance between an export's features of the probe and the torch model's beyond which
# the export is not the model's: float32 rounding gives about 1e-6, a damaged graph order 1.
PROBE_TOLERANCE = 1e-4
_LIBRARIES = ("torch", "torchvision", "open_clip_torch", "transformers", "onnxruntime")


def _library_versions() -> dict[str, str | None]:
    """Installed versions, read from the packages' metadata (nothing is imported)."""
    found: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def image_index_path(cache_root: Path, spec: str, fingerprint: str, preprocess: str) -> Path:
    """Where the entry of a model (spec and weights) and preprocessing lives."""
    key = make_key(
        kind="onnx-image-index",
        spec=spec,
        fingerprint=fingerprint,
        preprocess=preprocess,
        libraries=json.dumps(_library_versions(), sort_keys=True),
        format=INDEX_FORMAT,
    )
    return cache_root / "onnx-images" / f"{key[:32]}.json"


def probe_input(size: Sequence[int], count: int = 2) -> np.ndarray:
    """A seeded ``(count, 3, H, W)`` float32 model input, the same on every machine (PCG64)."""
    height, width = size
    return np.random.default_rng(0).standard_normal((count, 3, height, width)).astype(np.float32)


def relative_distance(got: np.ndarray, want: np.ndarray) -> float:
    """The largest distance between matching rows, relative to the row of ``want`` (NaN stays NaN)."""
    scale = np.maximum(np.linalg.norm(want, axis=1), 1e-30)
    return float(np.max(np.linalg.norm(np.asarray(got, np.float64) - want, axis=1) / scale))


@dataclass(frozen=True)
class ImageIndexEntry:
    """One model's entry: ``recipe`` is ``None`` where its images need torch."""

    export: str  # the export's folder name under CACHE/onnx/
    recipe: ImageRecipe | None
    preprocess_id: str
    dim: int
    probe_size: tuple[int, int] = (0, 0)
    probe_features: np.ndarray | None = None  # the torch model's raw features of probe_input(probe_size)


def write_image_index(path: Path, entry: ImageIndexEntry) -> bool:
    """Write ``entry`` at ``path`` atomically (a temporary file renamed into place); whether it
    was written (a cache folder that cannot be written to is logged, and the model keeps loading
    with torch)."""
    data = {
        "format": INDEX_FORMAT,
        "export": entry.export,
        "recipe": None if entry.recipe is None else entry.recipe.to_json(),
        "preprocess_id": entry.preprocess_id,
        "dim": int(entry.dim),
        "probe_size": [int(v) for v in entry.probe_size],
        "probe_features": [] if entry.probe_features is None else np.asarray(entry.probe_features).tolist(),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as err:
        logger.warning("Cannot write the ONNX image index %s (%s): images will need torch", path, err)
        tmp.unlink(missing_ok=True)
        return False
    return True


def read_image_index(path: Path) -> ImageIndexEntry | None:
    """The entry at ``path``, or ``None`` where there is none or it is unreadable (another format,
    damaged JSON)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            return None
        recipe = None if data["recipe"] is None else ImageRecipe.from_json(data["recipe"])
        size = tuple(int(v) for v in data["probe_size"])
        return ImageIndexEntry(
            export=str(data["export"]),
            recipe=recipe,
            preprocess_id=str(data["preprocess_id"]),
            dim=int(data["dim"]),
            probe_size=(size[0], size[1]),
            probe_features=np.asarray(data["probe_features"], np.float32),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
