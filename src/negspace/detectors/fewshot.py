"""What the few-shot test-time detectors (InterNeg, TINS) share: the ID text features, the fixed
bank and the class prototypes, checked once; and which images of a batch are inverted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from negspace.corpus.interneg import class_baselines
from negspace.detectors.base import OnlineDetector, as_unit_rows


class FewShotDetector(OnlineDetector):
    """A test-time detector built from ID text features, a fixed negative bank and the class
    prototypes of few-shot ID images (InterNeg, TINS)."""

    def _set_banks(self, id_text_features: np.ndarray, negative_features: np.ndarray, prototypes: np.ndarray,
                   neg_labels: Sequence[str] | None) -> None:
        """The features as unit rows of one width, and ``baselines`` = ``cos(t_c, p_c)`` of the
        inter-modal test."""
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        dim = self.id_text_features.shape[1]
        self.negative_features = as_unit_rows(negative_features, "negative text features", dim)
        self.prototypes = as_unit_rows(prototypes, "class prototypes", dim)
        if len(self.prototypes) != len(self.id_text_features):
            raise ValueError(f"{len(self.prototypes)} prototypes for {len(self.id_text_features)} ID classes")
        self.neg_labels = list(neg_labels) if neg_labels is not None else None
        self.baselines = class_baselines(self.id_text_features, self.prototypes)

    @classmethod
    def from_features(cls, id_text_features: np.ndarray, negative_features: np.ndarray, prototypes: np.ndarray,
                      config: Any = None, **options: Any) -> Any:
        """Build from features (no encoder needed; pass ``inverter=`` to learn at test time)."""
        return cls(id_text_features, negative_features, prototypes, config, **options)


def images_to_invert(scores: np.ndarray, beta: float, max_inverted: int = 0) -> np.ndarray:
    """Indices of the images scoring below ``beta`` (strictly, as both authors' codes), at most
    ``max_inverted`` of them (0: all), the lowest scores first."""
    active = np.flatnonzero(scores < beta)
    if max_inverted and len(active) > max_inverted:
        active = active[np.argsort(scores[active], kind="stable")[:max_inverted]]
    return active
