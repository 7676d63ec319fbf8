"""NegLabel (Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language
Models", ICLR 2024).

The score is the ID softmax mass over ``ID ∪ negatives`` at ``τ = 0.01``, averaged over ``G``
seeded groups of negatives (docs/methods/core.md and docs/methods/neglabel.md)::

    S_nl(v) = (1/G) Σ_g  Σ_i e^{cos(v,t_i)/τ} / (Σ_i e^{cos(v,t_i)/τ} + Σ_{j∈g} e^{cos(v,t-_j)/τ})

The negatives are mined from WordNet by :func:`negspace.corpus.mining.mine_negative_labels`.
ID names and nouns are prompted ``The nice {}.``, adjectives ``This is a {} photo.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from negspace.backend import resolve_backend, to_numpy
from negspace.detectors.base import (
    Detector,
    LabelledColumns,
    check_ranges,
    nearest_texts,
    resolve_config,
    row_argmax,
)
from negspace.detectors.saved import SavedDetector
from negspace.reprs import with_config_repr
from negspace.scoring import DEFAULT_TAU, as_unit_rows, group_order
from negspace.templates import ID_TEMPLATE as NEGLABEL_ID_TEMPLATE

if TYPE_CHECKING:
    from negspace.corpus.mining import MinedNegatives
    from negspace.encoders import ClipEncoder

DEFAULT_GROUPS = 100


@with_config_repr
@dataclass(frozen=True)
class NegLabelConfig:
    """NegLabel's hyper-parameters, with the paper's defaults: ``tau = 0.01``, ``G = 100`` groups
    drawn with ``seed``."""

    tau: float = DEFAULT_TAU
    groups: int = DEFAULT_GROUPS
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive=("tau",), at_least_one=("groups",))


class GroupedConfig(Protocol):
    """What NegLabel's grouped score reads from its config: a frozen dataclass with ``tau``,
    ``groups`` and ``seed`` (NegLabelConfig, and CSPConfig and NegRefineConfig for the detectors
    that reuse NegLabel; each detector refuses another's config at run time)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def tau(self) -> float: ...

    @property
    def groups(self) -> int: ...

    @property
    def seed(self) -> int: ...


class NegLabel(Detector):
    """Grouped negative-label score with a fixed bank of negative text features.

    Takes ``config=NegLabelConfig(...)`` or its fields as keywords (``groups=10``).

    Attributes:
        neg_labels: the negative label strings in bank order, when known.
        group_index_: indices of the bank in group order (the seeded permutation).
    """

    #: the name it is saved and registered under, and its config class (CSP, NegRefine reuse
    #: this detector with their own)
    method_name: ClassVar[str] = "neglabel"
    config_class: ClassVar[type] = NegLabelConfig
    config: GroupedConfig  # a config_class instance

    def __init__(
        self,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        config: GroupedConfig | None = None,
        *,
        neg_labels: Sequence[str] | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        self.config = resolve_config(self.config_class, config, params)
        groups = self.config.groups
        self.backend = resolve_backend(backend, device)
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        dim = self.id_text_features.shape[1]
        self.neg_text_features = as_unit_rows(neg_text_features, "negative text features", dim)
        n_neg = len(self.neg_text_features)
        if neg_labels is not None and len(neg_labels) != n_neg:
            raise ValueError(f"{len(neg_labels)} negative labels for {n_neg} negative features")
        if not 1 <= groups <= n_neg:
            raise ValueError(f"groups must be between 1 and the {n_neg} negative labels, got {groups}")
        self.tau, self.groups, self.seed = self.config.tau, self.config.groups, self.config.seed
        self.neg_labels = list(neg_labels) if neg_labels is not None else None
        self.group_index_ = group_order(n_neg, self.groups, self.seed)
        # ID labels and the bank in group order, stored once in one matrix: scoring is one GEMM,
        # then column views and a reshape (no copy of the (B, M) product).
        self._id_and_grouped = self.backend.asarray(
            np.concatenate([self.id_text_features, self.neg_text_features[self.group_index_]])
        )
        # the n mod G labels the groups leave out: not scored, but an image's nearest label may be one
        self._tail_rows = np.arange(len(self.group_index_), n_neg)
        self._tail = self.backend.asarray(self.neg_text_features[self._tail_rows])

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        config: GroupedConfig | None = None,
        *,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> NegLabel:
        """Build from ``(K, D)`` ID and ``(M, D)`` negative text features (no encoder needed)."""
        return cls(id_text_features, neg_text_features, config, backend=backend, device=device, **params)

    @classmethod
    def from_mined(
        cls,
        encoder: ClipEncoder,
        class_names: Sequence[str],
        mined: MinedNegatives,
        config: GroupedConfig | None = None,
        *,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> NegLabel:
        """Build from mined negatives; ID names are encoded as :meth:`encode_id_names` says."""
        id_features = cls.encode_id_names(encoder, class_names)
        detector = cls(
            id_features, mined.features, config, neg_labels=mined.labels, backend=backend, device=device, **params
        )
        detector.encoder = encoder
        detector.class_names = list(class_names)
        return detector

    @classmethod
    def encode_id_names(cls, encoder: ClipEncoder, class_names: Sequence[str]) -> np.ndarray:
        """The ID label features: ``The nice {}.`` (NegLabel's ID and noun template)."""
        return encoder.encode_texts(list(class_names), template=NEGLABEL_ID_TEMPLATE)

    def id_and_negative_cosines(self, image_features: Any) -> tuple[Any, Any]:
        """``(B, K)`` cosines to the ID labels and ``(B, M')`` to the bank in group order (arrays
        of the detector's backend)."""
        return self._cosines(image_features)[1:]

    def _cosines(self, image_features: Any) -> tuple[Any, Any, Any]:
        """The unit image rows, then :meth:`id_and_negative_cosines` (one GEMM)."""
        image = self.backend.unit_rows(image_features, "image features", self.id_text_features.shape[1])
        product = image @ self._id_and_grouped.T
        n_classes = len(self.id_text_features)
        return image, product[:, :n_classes], product[:, n_classes:]

    def score_features(self, image_features: Any) -> np.ndarray:
        id_cos, neg_cos = self.id_and_negative_cosines(image_features)
        return to_numpy(self.backend.ops.grouped_id_mass(id_cos, neg_cos, self.groups, self.tau))

    def score_with_nearest(self, image_features: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The scores, each image's nearest ID class and nearest negative label, from one product
        with the banks (the few labels the grouping leaves out are multiplied apart)."""
        image, id_cos, neg_cos = self._cosines(image_features)
        ops = self.backend.ops
        nearest_id = row_argmax(id_cos)[1]
        if self.neg_labels is None:
            return (
                to_numpy(ops.grouped_id_mass(id_cos, neg_cos, self.groups, self.tau)),
                nearest_id,
                [""] * len(nearest_id),
            )
        best = ops.row_max(neg_cos) if len(nearest_id) else None  # the shift of the log-sum-exps, and the nearest
        scores = to_numpy(
            ops.grouped_id_mass(id_cos, neg_cos, self.groups, self.tau, neg_peak=best[0] if best is not None else None)
        )
        return scores, nearest_id, nearest_texts(self.labelled_columns(image, neg_cos, best), len(nearest_id))

    def labelled_columns(
        self, image: Any, grouped_cos: Any, best: tuple[Any, Any] | None = None
    ) -> list[LabelledColumns]:
        """The bank's labels over a product in group order, and over the tail the groups leave
        out (multiplied here: fewer than ``G`` labels); ``image``: the unit rows on the backend,
        ``best``: each row's largest grouped cosine and its column, when known."""
        assert self.neg_labels is not None
        blocks = [LabelledColumns(grouped_cos, self.neg_labels, self.group_index_, best)]
        if len(self._tail_rows):
            blocks.append(LabelledColumns(image @ self._tail.T, self.neg_labels, self._tail_rows))
        return blocks

    def to_saved(self) -> SavedDetector:
        return SavedDetector(
            self.method_name,
            asdict(self.config),
            {"id_text_features": self.id_text_features, "neg_text_features": self.neg_text_features},
            {"neg_labels": self.neg_labels, "class_names": self.class_names},
        )

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> NegLabel:
        """The detector :meth:`save` wrote (see :func:`negspace.load_detector`)."""
        det = cls(
            saved.arrays["id_text_features"],
            saved.arrays["neg_text_features"],
            neg_labels=saved.extra.get("neg_labels"),
            backend=backend,
            device=device,
            **saved.params,
        )
        det.class_names = saved.extra.get("class_names")
        return det

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        return (self.neg_text_features, self.neg_labels) if self.neg_labels is not None else None

    def get_params(self) -> dict[str, Any]:
        return {
            "n_classes": len(self.id_text_features),
            "n_negatives": len(self.neg_text_features),
            **asdict(self.config),
            **self.backend.params(),
        }
