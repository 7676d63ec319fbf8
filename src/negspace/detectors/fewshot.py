"""What the few-shot test-time detectors (InterNeg, TINS) share: the ID text features, the fixed
bank and the class prototypes, checked once; saving and loading them with the learned state; and
which images of a batch are inverted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from negspace.corpus.interneg import class_baselines
from negspace.detectors.base import OnlineDetector
from negspace.detectors.saved import SavedDetector
from negspace.scoring import as_unit_rows

LEARNED_LABEL = "(learned negative {})"  # a learned row's name where a label is shown (negspace score)


class FewShotDetector(OnlineDetector):
    """A test-time detector built from ID text features, a fixed negative bank and the class
    prototypes of few-shot ID images (InterNeg, TINS)."""

    inverter: Any = None
    config: Any
    _initial: tuple[np.ndarray, ...] | None  # a loaded detector's learned state (``reset`` returns to it)
    #: the learned state's attributes, saved as arrays of these dtypes, in ``_initial``'s order
    STATE_ARRAYS: ClassVar[tuple[tuple[str, Any], ...]] = ()
    inversion_needs_words: ClassVar[bool] = False  # the inverter also reads the bank's words (neg_labels)
    method_name: ClassVar[str]  # set by each method

    if TYPE_CHECKING:  # the constructor every subclass has (from_features and from_saved call it)

        def __init__(
            self,
            id_text_features: np.ndarray,
            negative_features: np.ndarray,
            prototypes: np.ndarray,
            config: Any = None,
            *,
            neg_labels: Sequence[str] | None = None,
            **options: Any,
        ) -> None: ...

    def _set_banks(
        self,
        id_text_features: np.ndarray,
        negative_features: np.ndarray,
        prototypes: np.ndarray,
        neg_labels: Sequence[str] | None,
    ) -> None:
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

    def bank_labels(self, n_learned: int) -> list[str] | None:
        """The labels of the scored bank, ``[fixed; learned]``: the fixed negatives' words, then
        one name per learned (pseudo-token) row, which has no word (None without words)."""
        if self.neg_labels is None:
            return None
        return [*self.neg_labels, *(LEARNED_LABEL.format(i) for i in range(1, n_learned + 1))]

    def to_saved(self) -> SavedDetector:
        arrays = {
            "id_text_features": self.id_text_features,
            "negative_features": self.negative_features,
            "prototypes": self.prototypes,
            **{name: getattr(self, name) for name, _ in self.STATE_ARRAYS},
        }
        return SavedDetector(
            self.method_name,
            asdict(self.config),
            arrays,
            {"neg_labels": self.neg_labels, "class_names": self.class_names},
        )

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> Any:
        """The detector :meth:`save` wrote, with its learned state, frozen."""
        a = saved.arrays
        det = cls(
            a["id_text_features"],
            a["negative_features"],
            a["prototypes"],
            neg_labels=saved.extra.get("neg_labels"),
            **cls._backend_options(backend, device),
            **saved.params,
        )
        det._initial = tuple(np.asarray(a[name], dtype) for name, dtype in cls.STATE_ARRAYS)
        det.reset()
        det.class_names = saved.extra.get("class_names")
        det.freeze()
        return det

    @classmethod
    def _backend_options(cls, backend: str, device: str) -> dict[str, str]:
        """The constructor's scoring-backend keywords for a loaded detector."""
        return {"backend": backend, "device": device}

    def make_inverter(self) -> Any:
        """The method's inverter over ``encoder``'s text tower."""
        raise NotImplementedError

    def unfreeze(self) -> None:
        """Learn on: the inversion needs the text tower (a loaded detector gets one from its
        ``encoder``, which ``load_detector(folder, encoder=...)`` sets)."""
        if self.inverter is None:
            if self.encoder is None or (self.inversion_needs_words and self.neg_labels is None):
                raise ValueError(
                    f"{type(self).__name__} learns through the text tower: load it with "
                    "load_detector(folder, encoder=...) to unfreeze it"
                )
            self.inverter = self.make_inverter()
        super().unfreeze()

    def learns(self) -> bool:
        """Whether scoring a batch may change the bank (not frozen, and an inverter to learn with)."""
        return not self.frozen and self.inverter is not None

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        negative_features: np.ndarray,
        prototypes: np.ndarray,
        config: Any = None,
        **options: Any,
    ) -> Any:
        """Build from features (no encoder needed; pass ``inverter=`` to learn at test time)."""
        return cls(id_text_features, negative_features, prototypes, config, **options)


def images_to_invert(scores: np.ndarray, beta: float, max_inverted: int = 0) -> np.ndarray:
    """Indices of the images scoring below ``beta`` (strictly, as both authors' codes), at most
    ``max_inverted`` of them (0: all), the lowest scores first."""
    active = np.flatnonzero(scores < beta)
    if max_inverted and len(active) > max_inverted:
        active = active[np.argsort(scores[active], kind="stable")[:max_inverted]]
    return active
