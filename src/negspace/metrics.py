"""OOD detection metrics (docs/methods/evaluation.md), as pure functions and as a streaming object.

Scores follow the negspace convention: **higher = more in-distribution**. Two FPR95 conventions are
in use in the literature and both are reported:

- ``fpr95``: ID is the positive class. The threshold accepts 95% of ID; the value is the fraction
  of OOD samples also accepted (MCM and NegLabel papers).
- ``fpr95_ood``: OOD is the positive class. The threshold rejects 95% of OOD; the value is the
  fraction of ID samples also rejected (OpenOOD; the ANTS, TANL and AdaNeg tables).

AUROC is the same under both conventions. Everything is computed with scikit-learn's curves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# scikit-learn is imported where a metric is computed: it takes most of a second to import, and
# `negspace --help` or a scoring-only user should not pay for it.

RECALL_LEVEL = 0.95


def _labels_and_scores(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError("metrics need at least one ID and one OOD score")
    if not (np.all(np.isfinite(id_scores)) and np.all(np.isfinite(ood_scores))):
        raise ValueError("scores contain NaN or infinity")
    is_id = np.concatenate([np.ones(id_scores.size), np.zeros(ood_scores.size)])
    return is_id, np.concatenate([id_scores, ood_scores])


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve, ID positive (equal to the OOD-positive AUROC on negated scores)."""
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_id, scores))


def aupr_in(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with ID as the positive class."""
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_id, scores))


def aupr_out(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with OOD as the positive class (scores negated)."""
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(1 - is_id, -scores))


def _fpr_at_tpr(positive: np.ndarray, scores: np.ndarray, recall: float) -> float:
    # drop_intermediate=False keeps every threshold, so the first point reaching the recall
    # level is the exact operating point, not an interpolation.
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(positive, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, recall, side="left")])


def fpr95(id_scores: np.ndarray, ood_scores: np.ndarray, recall: float = RECALL_LEVEL) -> float:
    """Fraction of OOD accepted when ``recall`` (95%) of ID is accepted (ID positive)."""
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    return _fpr_at_tpr(is_id, scores, recall)


def fpr95_ood(id_scores: np.ndarray, ood_scores: np.ndarray, recall: float = RECALL_LEVEL) -> float:
    """Fraction of ID rejected when ``recall`` (95%) of OOD is rejected (OOD positive, OpenOOD)."""
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    return _fpr_at_tpr(1 - is_id, -scores, recall)


def threshold_at_id_recall(id_scores: np.ndarray, recall: float = RECALL_LEVEL) -> float:
    """The largest threshold ``t`` such that at least ``recall`` of ID scores are ``>= t``.

    This is the operating point of :func:`fpr95`: samples with ``score >= t`` are accepted as ID.
    """
    ordered = np.sort(np.asarray(id_scores, dtype=np.float64).ravel())[::-1]
    if ordered.size == 0:
        raise ValueError("threshold_at_id_recall needs at least one ID score")
    needed = int(np.ceil(recall * ordered.size - 1e-9))
    return float(ordered[max(needed, 1) - 1])


@dataclass(frozen=True)
class OODResult:
    """All metrics of one ID-vs-OOD comparison. Rates are fractions in [0, 1]."""

    auroc: float
    fpr95: float
    fpr95_ood: float
    aupr_in: float
    aupr_out: float
    n_id: int
    n_ood: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compute_all(id_scores: np.ndarray, ood_scores: np.ndarray) -> OODResult:
    """Every metric of this module for one pair of score arrays."""
    return OODResult(
        auroc=auroc(id_scores, ood_scores),
        fpr95=fpr95(id_scores, ood_scores),
        fpr95_ood=fpr95_ood(id_scores, ood_scores),
        aupr_in=aupr_in(id_scores, ood_scores),
        aupr_out=aupr_out(id_scores, ood_scores),
        n_id=int(np.size(id_scores)),
        n_ood=int(np.size(ood_scores)),
    )


@dataclass
class StreamingOODMetrics:
    """Accumulates scores batch by batch (``update``), then ``compute()``s every metric.

    Exact metrics need every score, so this keeps one float per sample seen (8 bytes each),
    in chunks to avoid re-allocating on every update. ``reset()`` empties it.
    """

    _id_chunks: list[np.ndarray] = field(default_factory=list)
    _ood_chunks: list[np.ndarray] = field(default_factory=list)

    def update(self, scores: np.ndarray, is_id: np.ndarray | bool) -> None:
        """Add a batch of scores; ``is_id`` is one boolean per score, or one for the whole batch."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        mask = np.broadcast_to(np.asarray(is_id, dtype=bool), scores.shape)
        self._id_chunks.append(scores[mask])
        self._ood_chunks.append(scores[~mask])

    def compute(self) -> OODResult:
        return compute_all(self._gather(self._id_chunks), self._gather(self._ood_chunks))

    def reset(self) -> None:
        self._id_chunks.clear()
        self._ood_chunks.clear()

    @staticmethod
    def _gather(chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.empty(0)
