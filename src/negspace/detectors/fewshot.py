"""What the few-shot test-time detectors (InterNeg, TINS) share: the ID text features, the fixed
bank and the class prototypes, checked once; and which images of a batch are inverted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from negspace.corpus.interneg import class_baselines
from negspace.detectors.base import as_unit_rows


class FewShotBanks:
    """The features a few-shot detector starts from (unit rows of one width), and
    ``baselines`` = ``cos(t_c, p_c)`` of its inter-modal test."""

    def __init__(self, id_text_features: np.ndarray, negative_features: np.ndarray, prototypes: np.ndarray,
                 neg_labels: Sequence[str] | None = None) -> None:
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        dim = self.id_text_features.shape[1]
        self.negative_features = as_unit_rows(negative_features, "negative text features", dim)
        self.prototypes = as_unit_rows(prototypes, "class prototypes", dim)
        if len(self.prototypes) != len(self.id_text_features):
            raise ValueError(f"{len(self.prototypes)} prototypes for {len(self.id_text_features)} ID classes")
        self.neg_labels = list(neg_labels) if neg_labels is not None else None
        self.baselines = class_baselines(self.id_text_features, self.prototypes)


def images_to_invert(scores: np.ndarray, beta: float, max_inverted: int = 0) -> np.ndarray:
    """Indices of the images scoring below ``beta`` (strictly, as both authors' codes), at most
    ``max_inverted`` of them (0: all), the lowest scores first."""
    active = np.flatnonzero(scores < beta)
    if max_inverted and len(active) > max_inverted:
        active = active[np.argsort(scores[active], kind="stable")[:max_inverted]]
    return active
