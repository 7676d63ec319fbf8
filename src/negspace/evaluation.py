"""Evaluation: turn image sets (or precomputed features) into scores and metrics.

The order of work is chosen for the user's sake: every data set is opened and checked before the
model loads, so a typo in a path fails in a second, not after a minute of loading weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace.data import ImageSet, open_image_set
from negspace.detectors.base import OnlineDetector, StreamBatch
from negspace.errors import DatasetError
from negspace.features_table import FeatureTable, check_model, is_feature_table, read_feature_table
from negspace.metrics import OODResult, compute_all
from negspace.reprs import fields_repr

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger(__name__)

METRIC_NAMES = ("auroc", "fpr95", "fpr95_ood", "aupr_in", "aupr_out")


@dataclass(frozen=True)
class FeatureFile:
    """A precomputed ``(N, D)`` feature matrix stored as ``.npy``."""

    name: str
    path: Path
    n_rows: int

    def __len__(self) -> int:
        return self.n_rows


@dataclass
class EncodedSet:
    """Features of one evaluation set, with the sample ids they belong to and what was skipped."""

    name: str
    features: np.ndarray
    sample_ids: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # encoding's stages (ImageEncoding.seconds)
    from_cache: int = 0  # rows read from the feature cache instead of encoded

    def __repr__(self) -> str:
        return fields_repr(self)


def _check_feature_file(path: Path, name: str) -> FeatureFile:
    if not path.is_file():
        raise DatasetError(f"Feature file {path} for set {name!r} does not exist.")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        what = (
            "holds Python objects, which negspace never unpickles"
            if re.search(r"pickle|Python objects", str(err))
            else f"cannot be read ({err})"
        )
        raise DatasetError(
            f"Feature file {path} for set {name!r} is not a numeric .npy array: it {what}; "
            "save an (N, D) float array with numpy.save."
        ) from None
    if array.ndim != 2 or array.shape[0] == 0:
        raise DatasetError(
            f"Feature file {path} for set {name!r} must hold a non-empty (N, D) array, got shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.number):
        raise DatasetError(f"Feature file {path} for set {name!r} holds {array.dtype} values, not numbers.")
    # Checked chunk by chunk so a large memory-mapped file is never loaded twice at once.
    for start in range(0, array.shape[0], 65_536):
        chunk = np.asarray(array[start : start + 65_536], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1) | ~chunk.any(axis=1))
        if bad.size:
            raise DatasetError(
                f"Feature file {path} for set {name!r} has {bad.size} row(s) that are all zero or not "
                f"finite (first: row {start + int(bad[0])})."
            )
    return FeatureFile(name, path, int(array.shape[0]))


def open_set(spec: str | Path, name: str) -> ImageSet | FeatureFile | FeatureTable:
    """Open an image set, a ``.npy`` feature file or a feature table (`negspace embed`'s Parquet);
    raises :class:`DatasetError` if unusable."""
    path = Path(spec)
    if path.suffix.lower() == ".npy":
        return _check_feature_file(path, name)
    if is_feature_table(path):
        return read_feature_table(path, name)
    return open_image_set(spec, name=name)


def encode_set(
    source: ImageSet | FeatureFile | FeatureTable,
    encoder: ClipEncoder | None,
    batch_size: int,
    progress: bool = True,
) -> EncodedSet:
    """Features for one opened set: loaded from ``.npy`` or a feature table, or encoded (and
    cached) from images."""
    if isinstance(source, FeatureTable):
        if encoder is not None:
            check_model(source, encoder)
        return EncodedSet(source.name, source.features, list(source.paths))
    if isinstance(source, FeatureFile):
        features = np.load(source.path, allow_pickle=False).astype(np.float32)
        if encoder is not None and features.shape[1] != encoder.dim:
            raise DatasetError(
                f"Feature file {source.path} has dimension {features.shape[1]} but the model "
                f"{encoder.spec} gives {encoder.dim}."
            )
        return EncodedSet(source.name, features, [f"{source.path.name}[{i}]" for i in range(len(features))])
    if encoder is None:
        raise ValueError("an encoder is needed to encode image files")
    log.info("encoding %d images of %s", len(source.paths), source.name)
    encoding = encoder.encode_image_files(source.paths, batch_size=batch_size, progress=progress)
    skipped = [{"path": str(s.path), "reason": s.reason} for s in encoding.skipped]
    if skipped:
        log.warning("%s: %d unreadable file(s) skipped", source.name, len(skipped))
    if len(encoding.features) == 0:
        raise DatasetError(f"No image of set {source.name!r} could be read ({len(skipped)} unreadable).")
    return EncodedSet(
        source.name, encoding.features, [str(p) for p in encoding.paths], skipped, encoding.seconds, encoding.from_cache
    )


@dataclass
class Evaluation:
    """Scores and metrics of one detector on one ID set against named OOD sets."""

    id_set: EncodedSet
    ood_sets: list[EncodedSet]
    id_scores: np.ndarray
    ood_scores: dict[str, np.ndarray]
    results: dict[str, OODResult]
    info: dict[str, Any] = field(default_factory=dict)
    stream_id_scores: dict[str, np.ndarray] | None = None
    stream_of: dict[str, str] | None = None  # OOD set -> the stream that scored it (test-time methods)
    whole: OODResult | None = None  # every ID score of every stream against every OOD score
    messages: list[str] = field(default_factory=list)  # what a person should read beside the table
    traces: dict[str, Any] = field(default_factory=dict)  # e.g. ANTS's "lam": (images seen, lam) pairs
    detector: Any = None  # the detector as the run left it (the run API sets it)
    stopped: str | None = None  # the stream after which the run stopped (ANTS: its MLLM failed)

    def id_scores_for(self, ood_name: str) -> np.ndarray:
        """The ID scores compared with one OOD set (its own stream's, for test-time methods)."""
        return self.stream_id_scores[ood_name] if self.stream_id_scores else self.id_scores

    def average(self) -> dict[str, float]:
        """Unweighted mean of each metric over the OOD sets (as the papers report)."""
        return {metric: float(np.mean([getattr(r, metric) for r in self.results.values()])) for metric in METRIC_NAMES}

    def __repr__(self) -> str:
        # a few lines for a notebook: what ran on what, and the averages; never the arrays
        method = self.info.get("method", "?")
        ood = ", ".join(f"{s.name}: {len(s.features)}" for s in self.ood_sets)
        average = (
            ", ".join(f"{metric}={value:.4f}" for metric, value in self.average().items()) if self.results else "none"
        )
        stopped = f", stopped after {self.stopped!r}" if self.stopped else ""
        return (
            f"Evaluation(method={method!r}, id={self.id_set.name!r}: {len(self.id_set.features)} images, "
            f"ood={{{ood}}},\n           average: {average}{stopped})"
        )


def evaluate_detector(
    score: Callable[[np.ndarray], np.ndarray],
    id_set: EncodedSet,
    ood_sets: list[EncodedSet],
    batch_size: int = 256,
) -> Evaluation:
    """Score the ID set and every OOD set with a stateless ``score`` function, batch by batch."""
    id_scores = score_in_batches(score, id_set.features, batch_size)
    ood_scores = {s.name: score_in_batches(score, s.features, batch_size) for s in ood_sets}
    results = {name: compute_all(id_scores, scores) for name, scores in ood_scores.items()}
    return Evaluation(id_set, ood_sets, id_scores, ood_scores, results)


def score_in_batches(score: Callable[[np.ndarray], np.ndarray], features: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply ``score`` to consecutive batches of ``features``; bounded memory for large sets."""
    parts = [score(features[start : start + batch_size]) for start in range(0, len(features), batch_size)]
    return np.concatenate(parts) if parts else np.empty(0)


def summarise_skipped(sets: Mapping[str, EncodedSet]) -> dict[str, list[dict[str, str]]]:
    """The unreadable files of every set that had any."""
    return {name: s.skipped for name, s in sets.items() if s.skipped}


def stream_order(n_id: int, n_ood: int, seed: int) -> np.ndarray:
    """The shuffled order of an ``ID ∪ OOD`` stream: indices < ``n_id`` are ID samples."""
    return np.random.default_rng(seed).permutation(n_id + n_ood)


STREAM_MODES = ("per-set", "sequential", "mixed")


def _batches(
    features: np.ndarray, samples: list[str], order: np.ndarray, batch_size: int, pass_images: bool
) -> list[StreamBatch]:
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [
        StreamBatch(features[chunk], [Path(samples[i]) for i in chunk] if pass_images else None) for chunk in chunks
    ]


def _score_segment(
    detector: OnlineDetector,
    features: np.ndarray,
    samples: list[str],
    order: np.ndarray,
    batch_size: int,
    pass_images: bool,
    finish: bool,
) -> np.ndarray:
    """Scores of one shuffled segment, aligned with ``features``."""
    scores = np.empty(len(order), dtype=np.float64)
    batches = _batches(features, samples, order, batch_size, pass_images)
    scores[order] = np.concatenate(detector.score_stream(batches, finish=finish))
    return scores


def evaluate_stream(
    detector: OnlineDetector,
    id_set: EncodedSet,
    ood_sets: list[EncodedSet],
    batch_size: int = 256,
    seed: int = 0,
    pass_images: bool = False,
    after_stream: Callable[[str, OnlineDetector, EncodedSet, np.ndarray], bool | None] | None = None,
    mode: str = "per-set",
) -> Evaluation:
    """The stream protocols of test-time methods (docs/methods/evaluation.md).

    - ``per-set`` (the papers' protocol): for each OOD set, reset the detector, shuffle
      ``ID ∪ OOD`` with ``seed`` and score it in batches of ``batch_size``.
    - ``sequential`` (the ANTS paper's temporal-shift study): the same segments, one per OOD set
      in the order given, met one after another with **no reset** (what was learned on one
      segment is carried into the next).
    - ``mixed`` (an open world): ID and every OOD set in one stream shuffled with ``seed``.

    Each batch is scored with the state left by the previous ones. Metrics are computed per OOD
    set (against the ID scores of the stream, or segment, it was scored in) and for the whole
    stream (``Evaluation.whole``: every ID score against every OOD score). The ID scores
    reported (and plotted) are those of the first stream; each set's own are in
    ``stream_id_scores``. With ``pass_images`` each batch also carries its image paths.
    ``after_stream(name, detector, stream_set, scores)`` runs after each stream or segment (the
    place to save or explain what the detector learned): ``stream_set`` holds its ID then OOD
    features and sample ids, ``scores`` align with them. When it returns ``True`` the evaluation
    stops there: the result holds the OOD sets scored so far, ``info["stream"]["stopped_after"]``
    names the last one.
    """
    if mode not in STREAM_MODES:
        raise ValueError(f"stream mode must be one of {STREAM_MODES}, got {mode!r}")
    n_id = len(id_set.features)
    id_scores_per_set: dict[str, np.ndarray] = {}
    ood_scores: dict[str, np.ndarray] = {}
    stream_of: dict[str, str] = {}
    stopped_after = None
    detector.reset()
    if mode == "mixed":
        features = np.concatenate([id_set.features, *(s.features for s in ood_sets)])
        samples = id_set.sample_ids + [sid for s in ood_sets for sid in s.sample_ids]
        order = stream_order(n_id, len(features) - n_id, seed)
        scores = _score_segment(detector, features, samples, order, batch_size, pass_images, finish=True)
        if after_stream is not None and after_stream("mixed", detector, EncodedSet("mixed", features, samples), scores):
            stopped_after = "mixed"
        start = n_id
        for ood in ood_sets:
            id_scores_per_set[ood.name] = scores[:n_id]
            ood_scores[ood.name] = scores[start : start + len(ood.features)]
            stream_of[ood.name] = "mixed"
            start += len(ood.features)
    else:
        for k, ood in enumerate(ood_sets):
            if mode == "per-set" and k:
                detector.reset()
            features = np.concatenate([id_set.features, ood.features])
            samples = id_set.sample_ids + ood.sample_ids
            order = stream_order(n_id, len(ood.features), seed)
            last = mode == "per-set" or k == len(ood_sets) - 1
            scores = _score_segment(detector, features, samples, order, batch_size, pass_images, finish=last)
            id_scores_per_set[ood.name] = scores[:n_id]
            ood_scores[ood.name] = scores[n_id:]
            stream_of[ood.name] = ood.name
            if after_stream is not None and after_stream(
                ood.name, detector, EncodedSet(ood.name, features, samples), scores
            ):
                stopped_after = ood.name
                break
    results = {name: compute_all(id_scores_per_set[name], ood_scores[name]) for name in ood_scores}
    distinct = {stream: id_scores_per_set[name] for name, stream in stream_of.items()}
    whole = compute_all(np.concatenate(list(distinct.values())), np.concatenate(list(ood_scores.values())))
    first = ood_sets[0].name
    scored = [s for s in ood_sets if s.name in ood_scores]
    evaluation = Evaluation(
        id_set,
        scored,
        id_scores_per_set[first],
        ood_scores,
        results,
        stream_id_scores=id_scores_per_set,
        stream_of=stream_of,
        whole=whole,
    )
    evaluation.info["stream"] = {
        "mode": mode,
        "seed": seed,
        "batch_size": batch_size,
        "reset_between_ood_sets": mode == "per-set",
        "order": [s.name for s in ood_sets],
    }
    if stopped_after is not None:
        evaluation.info["stream"]["stopped_after"] = stopped_after
    return evaluation
