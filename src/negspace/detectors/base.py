"""What every detector shares: input checks and the image-level entry point."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from negspace import scoring
from negspace.backend import to_numpy
from negspace.reprs import changed_fields, params_repr
from negspace.scoring import as_unit_rows

if TYPE_CHECKING:
    from pathlib import Path

    from _typeshed import DataclassInstance
    from PIL.Image import Image

    from negspace.detectors.saved import SavedDetector
    from negspace.encoders import ClipEncoder


ConfigT = TypeVar("ConfigT", bound="DataclassInstance")  # a detector's config dataclass


@dataclass(frozen=True)
class LabelledColumns:
    """Cosines of a batch to some negative labels, as a score already computed them: ``(B, m)``
    on the detector's backend, column ``j`` being label ``labels[rows[j]]`` (``rows`` None: label
    ``j``)."""

    cosines: Any
    labels: Sequence[str]
    rows: np.ndarray | None = None
    best: tuple[Any, Any] | None = None  # each row's largest cosine and its column, when the score found them


def row_argmax(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest value (float64) and its column, computed where ``values`` live (NumPy or
    a torch tensor on its device: only ``2B`` numbers come back to the host)."""
    if isinstance(values, np.ndarray):
        best, columns = scoring.row_max(values)
        return to_numpy(best), to_numpy(columns, np.int64)
    from negspace import torch_scoring

    on_device = torch_scoring.row_max(values)
    return to_numpy(on_device[0]), to_numpy(on_device[1], np.int64)


def nearest_texts(blocks: Sequence[LabelledColumns], n_images: int) -> list[str]:
    """Per image, the label of the largest cosine over every block (``""`` when there is none):
    the nearest negative label, read off products a score has made."""
    best = np.full(n_images, -np.inf)
    block_of = np.full(n_images, -1)
    row_of = np.zeros(n_images, dtype=np.int64)
    for k, block in enumerate(blocks):
        if block.cosines.shape[1] == 0:
            continue
        values, columns = (
            row_argmax(block.cosines)
            if block.best is None
            else (to_numpy(block.best[0]), to_numpy(block.best[1], np.int64))
        )
        better = values > best
        best[better] = values[better]
        block_of[better] = k
        row_of[better] = (columns if block.rows is None else block.rows[columns])[better]
    return [blocks[k].labels[r] if k >= 0 else "" for k, r in zip(block_of.tolist(), row_of.tolist(), strict=True)]


def check_ranges(
    config: Any,
    *,
    positive: Sequence[str] = (),
    at_least_one: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    unit_interval: Sequence[str] = (),
) -> None:
    """Raise ``ValueError`` naming the first field of ``config`` outside its range (a config's
    ``__post_init__`` check)."""
    ranges: tuple[tuple[Sequence[str], Callable[[Any], bool], str], ...] = (
        (positive, lambda v: v > 0, "must be positive"),
        (at_least_one, lambda v: v >= 1, "must be at least 1"),
        (non_negative, lambda v: v >= 0, "must be >= 0"),
        (unit_interval, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    )
    for names, inside, says in ranges:
        for name in names:
            value = getattr(config, name)
            if not inside(value):
                raise ValueError(f"{name} {says}, got {value}")


def resolve_config(config_type: type[ConfigT], config: ConfigT | None, overrides: dict[str, Any]) -> ConfigT:
    """``config`` (default: ``config_type()``, the paper's defaults) with keyword ``overrides``.

    Every detector takes ``config=`` or the config's fields as keywords; a name that is not a
    field is a ``TypeError`` naming the fields, as a wrong keyword argument would be.
    """
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"{config_type.__name__} has no field {', '.join(map(repr, unknown))} (fields: {', '.join(sorted(known))})"
        )
    base = config if config is not None else config_type()
    if not isinstance(base, config_type):
        raise TypeError(f"config must be a {config_type.__name__}, got {type(base).__name__}")
    return replace(base, **overrides) if overrides else base


class Detector(ABC):
    """A zero-shot OOD detector. Scores are **higher for in-distribution** samples."""

    encoder: ClipEncoder | None = None
    class_names: list[str] | None = None  # the ID class names, when the detector was built from them
    id_text_features: np.ndarray

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        """The negative texts' features and texts that label an image's nearest negative
        (``None`` for a method without negatives)."""
        return None

    def nearest_labels(self, image_features: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, list[str]]:
        """Per image: the index of its nearest ID class and the text of its nearest negative
        (``""`` without negatives); what `negspace score` writes beside each score."""
        image = as_unit_rows(image_features, "image features", self.id_text_features.shape[1], copy=False)
        nearest_id = np.argmax(image @ self.id_text_features.T, axis=1)
        bank = self.negative_bank()
        if bank is None or len(bank[1]) == 0:
            return nearest_id, [""] * len(image)
        features, texts = bank
        nearest = (
            np.concatenate([np.argmax(image[s : s + chunk] @ features.T, axis=1) for s in range(0, len(image), chunk)])
            if len(image)
            else np.zeros(0, int)
        )
        return nearest_id, [texts[i] for i in nearest]

    def score_with_nearest(self, image_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The scores and what `negspace score` writes beside them (:meth:`nearest_labels`);
        detectors whose score already makes the products override it to make them once."""
        return (self.score_features(image_features), *self.nearest_labels(image_features))

    @abstractmethod
    def score_features(self, image_features: np.ndarray) -> np.ndarray:
        """Score a batch of image features ``(B, D)``; returns ``(B,)`` float64."""

    def score_images(self, images: Sequence[Image], batch_size: int = 64) -> np.ndarray:
        """Encode PIL images with the detector's encoder, then :meth:`score_features`."""
        if self.encoder is None:
            raise RuntimeError(
                f"{type(self).__name__} was built from features and has no encoder; "
                "use score_features, or build it with from_encoder(...)"
            )
        return self.score_features(self.encoder.encode_images(images, batch_size=batch_size))

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters the detector was built with (for printing and reproducing)."""
        return {}

    def save(self, directory: str | Path) -> Path:
        """Write the detector as plain files (JSON + ``.npy``); :func:`negspace.load_detector`
        reads it back and scores exactly as this one does."""
        from negspace.detectors.saved import write_saved

        return write_saved(directory, self.to_saved())

    def to_saved(self) -> SavedDetector:
        """What :meth:`save` writes (each detector says what it needs)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> Detector:
        """The detector :meth:`to_saved` described (each detector that can be saved reads it back)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")

    def __repr__(self) -> str:
        # sizes and the settings that differ from the paper's defaults; the whole config is
        # get_params()
        params = self.get_params()
        config = getattr(self, "config", None)
        if dataclasses.is_dataclass(config):
            defaults = {f.name for f in dataclasses.fields(config)}
            params = {key: value for key, value in params.items() if key not in defaults}
            params.update(changed_fields(config))
        return params_repr(type(self).__name__, params)


@dataclass(frozen=True)
class StreamBatch:
    """One batch of a test stream: features and, for detectors that look at pixels, the images."""

    features: np.ndarray
    images: Sequence[Any] | None = None


class OnlineDetector(Detector):
    """A test-time detector with state: each batch is scored, then the state is updated.

    ``reset()`` restores the initial state exactly (the stream protocol resets between OOD sets).
    Subclasses that need the whole stream (e.g. a two-pass mode) override :meth:`score_stream`.
    A *frozen* detector scores with its current state and never updates it, so its score of an
    image does not depend on the batch or on what came before: it can score a collection in any
    order and in parallel (learn on a sample, save, load frozen, apply at scale).
    """

    frozen: bool = False

    def freeze(self) -> None:
        """Stop learning: later batches are scored with the current state, which stays as it is."""
        self.frozen = True

    def unfreeze(self) -> None:
        """Learn from later batches again."""
        self.frozen = False

    @abstractmethod
    def reset(self) -> None:
        """Forget everything learned from the stream."""

    @abstractmethod
    def score_features(self, image_features: np.ndarray, images: Sequence[Any] | None = None) -> np.ndarray:
        """Score one batch with the current state, then update the state from it."""

    def score_stream(self, batches: Sequence[StreamBatch], finish: bool = True) -> list[np.ndarray]:
        """Score a whole stream in order; returns one score array per batch.

        ``finish=False`` says the stream goes on in a later call (a detector with end-of-stream
        work, such as ANTS describing its last pooled negatives, then leaves it for later).
        """
        return [self.score_features(batch.features, images=batch.images) for batch in batches]
