"""What ANTS learns from a stream: one bounded dataclass, and its plain-file form.

Nothing in :class:`ANTSState` grows with the stream: the ENS bank holds at most ``ens_size``
rows, the VSNL answers at most one entry per ID class, the score history is a fixed-bin histogram
(paper rule) or a ring of the newest base scores (histogram rule), prediction counts are
``K``-vectors, the negatives behind ``lam`` and the activation-aware ENS window are rings, and the
pool of negatives waiting for the MLLM is flushed whenever it reaches ``min_candidates`` (so it
never exceeds ``min_candidates + batch size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ring import RingBuffer

# Counters and scalars saved as JSON, restored as they were.
SCALARS = (
    "threshold",
    "batches_seen",
    "images_seen",
    "ens_updates",
    "vsnl_updates",
    "mllm_requests",
    "failed_answers",
    "rejected_answers",
    "ens_names_removed",
    "vsnl_id_names_removed",
    "negatives_mined",
    "negatives_described",
    "negatives_undescribed_budget",
    "negatives_not_selected",
    "budget_exhausted",
    "ens_version",
    "vsnl_version",
    "sample_ens_version",
    "sample_vsnl_version",
    "balanced_sum_ens",
    "balanced_sum_vsnl",
    "balanced_count",
)
RINGS = ("score_history", "neg_sample", "neg_sample_scores", "neg_sample_half", "id_sample", "activation_window")
ARRAYS = (
    "score_hist",
    "neg_pred_counts",
    "all_pred_counts",
    "first_seen",
    "ens_features",
    "ens_halves",
    "vsnl_features",
)


def _ring(capacity: int, width: int | None, dtype: Any) -> RingBuffer:
    return RingBuffer(capacity, width, dtype)


@dataclass
class ANTSState:
    """Everything ANTS has learned; bounded (see the module doc). Build with :meth:`fresh`."""

    dim: int
    n_classes: int
    threshold: float  # gamma*: paper rule nan until the first candidate; histogram rule its start
    ens_capacity: int
    # ENS bank in bank order (see ANTSConfig.ens_order); ens_halves: bit h set when a negative of
    # half h produced the sentence (crossfit lam).
    ens_texts: list[str] = field(default_factory=list)
    ens_features: np.ndarray = None  # type: ignore[assignment]  # set by fresh()
    ens_halves: np.ndarray = None  # type: ignore[assignment]  # set by fresh()
    # VSNL: parsed answers per ID class (insertion ordered, at most K), the active classes Y'.
    vsnl_answers: dict[int, list[str]] = field(default_factory=dict)
    vsnl_answer_features: dict[int, np.ndarray] = field(default_factory=dict)
    vsnl_classes: list[int] = field(default_factory=list)
    vsnl_texts: list[str] = field(default_factory=list)
    vsnl_features: np.ndarray = None  # type: ignore[assignment]  # set by fresh()
    # histories as fixed-size counts and rings
    score_hist: np.ndarray = None  # type: ignore[assignment]  # set by fresh()
    score_history: RingBuffer | None = None
    neg_pred_counts: np.ndarray = None  # type: ignore[assignment]  # set by fresh()
    all_pred_counts: np.ndarray = None  # type: ignore[assignment]  # set by fresh()
    first_seen: np.ndarray = None  # type: ignore[assignment]  # set by fresh(); stream position of each class's first prediction
    # lam: newest negatives (features; S_nl, S_ens, S_vsnl with the banks of sample_*_version; half),
    # confident-ID samples (crossfit), the authors' running sums of balanced scores
    neg_sample: RingBuffer = None  # type: ignore[assignment]  # set by fresh()
    neg_sample_scores: RingBuffer = None  # type: ignore[assignment]  # set by fresh()
    neg_sample_half: RingBuffer = None  # type: ignore[assignment]  # set by fresh()
    id_sample: RingBuffer | None = None
    sample_ens_version: int = 0
    sample_vsnl_version: int = 0
    balanced_sum_ens: float = 0.0
    balanced_sum_vsnl: float = 0.0
    balanced_count: int = 0
    activation_window: RingBuffer | None = None
    # negatives waiting for a description (flushed at min_candidates)
    pending_features: list[np.ndarray] = field(default_factory=list)
    pending_images: list[Any] = field(default_factory=list)
    pending_preds: list[np.ndarray] = field(default_factory=list)
    pending_scores: list[np.ndarray] = field(default_factory=list)
    pending_halves: list[np.ndarray] = field(default_factory=list)
    # counters
    batches_seen: int = 0
    images_seen: int = 0
    ens_updates: int = 0
    vsnl_updates: int = 0
    mllm_requests: int = 0
    failed_answers: int = 0
    rejected_answers: int = 0  # answers unusable as a whole
    ens_names_removed: int = 0  # descriptions kept after the predicted class name was cut out
    vsnl_id_names_removed: int = 0  # ID class names dropped from VSNL answers that were kept
    negatives_mined: int = 0
    negatives_described: int = 0  # sent to the MLLM for a description
    negatives_undescribed_budget: int = 0  # mined while ENS could grow, never described: budget
    negatives_not_selected: int = 0  # left out by the diversity selection
    budget_exhausted: bool = False
    ens_version: int = 0  # bumped on every bank change
    vsnl_version: int = 0

    @classmethod
    def fresh(cls, config: ANTSConfig, dim: int, n_classes: int) -> ANTSState:
        """The empty state of a detector with ``config``."""
        histogram = config.threshold == "histogram"
        return cls(
            dim=dim,
            n_classes=n_classes,
            threshold=config.histogram_start if histogram else math.nan,
            ens_capacity=config.ens_size,
            ens_features=np.zeros((0, dim), np.float32),
            ens_halves=np.zeros(0, np.int8),
            vsnl_features=np.zeros((0, dim), np.float32),
            score_hist=np.zeros(config.histogram_bins, np.int64),
            score_history=_ring(config.score_history, None, np.float32) if histogram else None,
            neg_pred_counts=np.zeros(n_classes, np.int64),
            all_pred_counts=np.zeros(n_classes, np.int64),
            first_seen=np.full(n_classes, np.iinfo(np.int64).max, np.int64),
            neg_sample=_ring(config.lam_sample, dim, np.float32),
            neg_sample_scores=_ring(config.lam_sample, 3, np.float64),
            neg_sample_half=_ring(config.lam_sample, None, np.int8),
            id_sample=_ring(config.lam_sample, dim, np.float32) if config.lam_rule == "crossfit" else None,
            activation_window=_ring(config.activation_window, None, np.float64)
            if config.ens_score == "activation"
            else None,
        )

    # -- banks ----------------------------------------------------------------------------------

    @property
    def ens_count(self) -> int:
        return len(self.ens_texts)

    @property
    def ens_bank(self) -> np.ndarray:
        """``(n, D)`` ENS features in bank order."""
        return self.ens_features

    @property
    def vsnl_bank(self) -> np.ndarray:
        return self.vsnl_features

    def add_ens(self, texts: list[str], features: np.ndarray, halves: np.ndarray, prepend: bool) -> None:
        """Add sentences after (or, ``prepend``, before) the bank; over capacity the oldest go."""
        if not texts:
            return
        features = np.asarray(features, dtype=np.float32)
        halves = np.asarray(halves, dtype=np.int8)
        cap = self.ens_capacity
        if prepend:  # newest first: the oldest are at the end
            self.ens_texts = (list(texts) + self.ens_texts)[:cap]
            self.ens_features = np.concatenate([features, self.ens_features])[:cap]
            self.ens_halves = np.concatenate([halves, self.ens_halves])[:cap]
        else:
            self.ens_texts = (self.ens_texts + list(texts))[-cap:]
            self.ens_features = np.concatenate([self.ens_features, features])[-cap:]
            self.ens_halves = np.concatenate([self.ens_halves, halves])[-cap:]
        self.ens_version += 1

    # -- the pool of negatives waiting for the MLLM -----------------------------------------------

    @property
    def pending_count(self) -> int:
        return int(sum(len(p) for p in self.pending_preds))

    def pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        """The pooled negatives in stream order: features, predictions, S_nl, halves, images."""

        def joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
            return np.concatenate(parts) if parts else empty

        return (
            joined(self.pending_features, np.zeros((0, self.dim), np.float32)),
            joined(self.pending_preds, np.zeros(0, np.int64)),
            joined(self.pending_scores, np.zeros(0)),
            joined(self.pending_halves, np.zeros(0, np.int8)),
            list(self.pending_images),
        )

    def take_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        """:meth:`pooled`, then an empty pool."""
        pooled = self.pooled()
        for pool in (
            self.pending_features,
            self.pending_images,
            self.pending_preds,
            self.pending_scores,
            self.pending_halves,
        ):
            pool.clear()
        return pooled

    # -- plain files ------------------------------------------------------------------------------

    def to_files(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(json_document, arrays)``: the whole state as JSON types and named arrays.

        Pooled negatives are kept only when their images are paths (in-memory images are not
        saved; the pool is then dropped and ``pending_dropped`` says how many).
        """
        doc: dict[str, Any] = {name: getattr(self, name) for name in SCALARS}
        doc["threshold"] = None if math.isnan(self.threshold) else self.threshold
        doc.update(
            dim=self.dim,
            n_classes=self.n_classes,
            ens_capacity=self.ens_capacity,
            ens_texts=self.ens_texts,
            vsnl_classes=self.vsnl_classes,
            vsnl_texts=self.vsnl_texts,
            vsnl_answers=[[c, names] for c, names in self.vsnl_answers.items()],
        )
        arrays = {name: getattr(self, name) for name in ARRAYS}
        for c, rows in self.vsnl_answer_features.items():
            arrays[f"vsnl_answer.{c}"] = rows
        doc["rings"] = {}
        for name in RINGS:
            ring = getattr(self, name)
            if ring is not None:
                doc["rings"][name] = {"capacity": ring.capacity, "head": ring.head, "count": ring.count}
                arrays[f"ring.{name}"] = ring.rows()
        savable = all(img is None or isinstance(img, (str, Path)) for img in self.pending_images)
        doc["pending_dropped"] = 0 if savable else self.pending_count
        doc["pending_images"] = [None if i is None else str(i) for i in self.pending_images] if savable else []
        features, preds, scores, halves, _ = self.pooled()
        if not savable:
            features, preds, scores, halves = features[:0], preds[:0], scores[:0], halves[:0]
        arrays.update(pending_features=features, pending_preds=preds, pending_scores=scores, pending_halves=halves)
        return doc, arrays

    @classmethod
    def from_files(cls, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> ANTSState:
        """Rebuild a state written by :meth:`to_files`."""
        state = cls(
            dim=int(doc["dim"]),
            n_classes=int(doc["n_classes"]),
            threshold=math.nan,
            ens_capacity=int(doc["ens_capacity"]),
        )
        for name in SCALARS:
            setattr(state, name, doc[name])
        state.threshold = math.nan if doc["threshold"] is None else float(doc["threshold"])
        for name in ARRAYS:
            setattr(state, name, np.asarray(arrays[name]))
        state.ens_features = state.ens_features.astype(np.float32).reshape(-1, state.dim)
        state.vsnl_features = state.vsnl_features.astype(np.float32).reshape(-1, state.dim)
        state.ens_texts = list(doc["ens_texts"])
        state.vsnl_classes = [int(c) for c in doc["vsnl_classes"]]
        state.vsnl_texts = list(doc["vsnl_texts"])
        for c, names in doc["vsnl_answers"]:
            state.vsnl_answers[int(c)] = list(names)
            state.vsnl_answer_features[int(c)] = np.asarray(arrays[f"vsnl_answer.{c}"], np.float32).reshape(
                -1, state.dim
            )
        for name, meta in doc["rings"].items():
            rows = np.asarray(arrays[f"ring.{name}"])
            ring = RingBuffer(int(meta["capacity"]), rows.shape[1] if rows.ndim == 2 else None, rows.dtype)
            ring.data[: len(rows)] = rows
            ring.head, ring.count = int(meta["head"]), int(meta["count"])
            setattr(state, name, ring)
        if len(arrays["pending_preds"]):
            state.pending_features.append(np.asarray(arrays["pending_features"], np.float32))
            state.pending_preds.append(np.asarray(arrays["pending_preds"], np.int64))
            state.pending_scores.append(np.asarray(arrays["pending_scores"], np.float64))
            state.pending_halves.append(np.asarray(arrays["pending_halves"], np.int8))
            state.pending_images.extend(None if p is None else Path(p) for p in doc["pending_images"])
        return state
