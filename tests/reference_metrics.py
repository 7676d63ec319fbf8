"""OOD metrics computed apart from ``negspace.metrics``, to check the numbers a run wrote against
the scores it wrote: AUROC by scikit-learn's ``roc_auc_score``, average precision by its
``average_precision_score``, both FPR95 conventions literally from their definitions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _needed(n: int) -> int:
    """``ceil(0.95 n)`` in integers (``0.95 * n`` in floating point can land just above an integer)."""
    return -(-95 * n // 100)


def auroc(id_scores, ood_scores) -> float:
    from sklearn.metrics import roc_auc_score

    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    return float(roc_auc_score(np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)], np.r_[id_scores, ood_scores]))


def aupr_in(id_scores, ood_scores) -> float:
    from sklearn.metrics import average_precision_score

    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    return float(
        average_precision_score(np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)], np.r_[id_scores, ood_scores])
    )


def fpr95(id_scores, ood_scores) -> float:
    """ID positive: accept the ``ceil(0.95 n)`` highest ID scores (threshold: the lowest of them);
    the fraction of OOD scores at or above that threshold."""
    threshold = np.sort(np.asarray(id_scores, float))[::-1][_needed(np.size(id_scores)) - 1]
    return float(np.mean(np.asarray(ood_scores, float) >= threshold))


def fpr95_ood(id_scores, ood_scores) -> float:
    """OOD positive: reject the ``ceil(0.95 m)`` lowest OOD scores (threshold: the highest of
    them); the fraction of ID scores at or below that threshold."""
    threshold = np.sort(np.asarray(ood_scores, float))[_needed(np.size(ood_scores)) - 1]
    return float(np.mean(np.asarray(id_scores, float) <= threshold))


def reference(id_scores, ood_scores) -> dict[str, float]:
    """Every metric above, keyed as ``metrics.json`` keys them, with the counts."""
    return {
        "auroc": auroc(id_scores, ood_scores),
        "fpr95": fpr95(id_scores, ood_scores),
        "fpr95_ood": fpr95_ood(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "n_id": int(np.size(id_scores)),
        "n_ood": int(np.size(ood_scores)),
    }


def assert_metrics(written, id_scores, ood_scores, *, abs_tol: float = 1e-12) -> None:
    """``written`` (an ``OODResult`` or its ``metrics.json`` dict) holds the reference metrics of
    these scores."""
    got = written if isinstance(written, dict) else written.as_dict()
    for name, want in reference(id_scores, ood_scores).items():
        assert abs(got[name] - want) <= abs_tol, f"{name}: written {got[name]!r}, from the scores {want!r}"


def read_scores_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def scores_of(rows: list[dict[str, str]], ood_set: str) -> tuple[np.ndarray, np.ndarray]:
    """The ID and OOD scores that ``scores.csv`` pairs for ``ood_set``: its OOD rows, and the ID
    rows of the same stream (every ID row where the method scores without a stream)."""
    ood = [r for r in rows if r["set"] == ood_set and r["is_id"] == "0"]
    streams = {r["stream"] for r in ood}
    assert ood and len(streams) == 1, f"{len(ood)} rows of {ood_set}, streams {streams}"
    stream = streams.pop()
    id_scores = [float(r["score"]) for r in rows if r["is_id"] == "1" and r["stream"] == stream]
    return np.asarray(id_scores), np.asarray([float(r["score"]) for r in ood])
