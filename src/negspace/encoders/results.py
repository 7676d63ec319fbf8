"""What encoding gives back, free of torch: the features of image files with the files skipped,
and unit-normalising rows. Shared by :class:`~negspace.encoders.base.ClipEncoder` and the
torch-free :class:`~negspace.encoders.onnx_images.OnnxImageEncoder`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from negspace.errors import NegspaceError
from negspace.reprs import fields_repr

__all__ = ["ImageEncoding", "SkippedFile", "as_unit_float32", "check_batch_size"]


@dataclass(frozen=True)
class SkippedFile:
    """An input file that could not be encoded, and why."""

    path: Path
    reason: str


@dataclass
class ImageEncoding:
    """Features of the readable files among the inputs.

    Attributes:
        features: ``(n_kept, D)`` float32, rows L2-normalised.
        paths: the kept files, in input order (the input minus ``skipped``).
        skipped: files that could not be read, with the reason.
        seconds: wall time per stage: ``hash`` (stat, hash, cache lookup), ``decode`` (waiting
            for decoded, transformed batches: the part the workers did not hide), ``encode``
            (the model and the cache writes).
    """

    features: np.ndarray
    paths: list[Path]
    skipped: list[SkippedFile] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)  # SHA-256 of each kept file's bytes, in order
    seconds: dict[str, float] = field(default_factory=dict)
    from_cache: int = 0  # how many of the kept files' features were read from the cache

    def __repr__(self) -> str:
        return fields_repr(self)


def as_unit_float32(features: np.ndarray) -> np.ndarray:
    """Rows to unit L2 norm (norms taken in the input's precision), as float32."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size below 1 in one sentence."""
    if batch_size < 1:
        raise NegspaceError(f"batch size must be a positive integer, got {batch_size}.")
