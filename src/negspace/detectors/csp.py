"""CSP (Chen et al., "Conjugated Semantic Pool Improves OOD Detection with Pre-trained
Vision-Language Models", NeurIPS 2024; official code github.com/MengyuanChen21/NeurIPS2024-CSP).

A training-free NegLabel with a larger, differently built bank (docs/methods/csp.md): WordNet
nouns and *conjugated* adjective phrases ``"{adjective} {superclass word}"``, each label's
feature the mean of its unnormalised features over the code's prompt templates, then normalised;
the labels whose 0.95-quantile cosine to the ID classes is lowest are kept (15% of each part,
:mod:`negspace.corpus.csp`). The score is NegLabel's grouped score with ``G = 100``, ``τ = 0.01``::

    S(v) = (1/G) Σ_g  Σ_i e^{cos(v,t_i)/τ} / (Σ_i e^{cos(v,t_i)/τ} + Σ_{j∈g} e^{cos(v,t-_j)/τ})

ID names are prompted with the 8 noun templates (averaged, as the negatives are).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from negspace.corpus.csp import WORDNET_POOL, PoolSelection
from negspace.detectors.base import check_ranges
from negspace.detectors.neglabel import DEFAULT_GROUPS, NegLabel
from negspace.reprs import with_config_repr
from negspace.scoring import DEFAULT_TAU
from negspace.templates import CSP_NOUN_TEMPLATES

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder


@with_config_repr
@dataclass(frozen=True)
class CSPConfig:
    """CSP's hyper-parameters, with the authors' defaults: the score's ``tau``, ``groups`` and
    grouping ``seed``; the pool (``"wordnet"`` or a corpus file) and its adjective draw
    (``pool_seed``); the selection (``quantile`` 0.95, ratio 1 above ``saturate_above`` 0.95,
    the lowest ``fraction`` 0.15 of each part)."""

    tau: float = DEFAULT_TAU
    groups: int = DEFAULT_GROUPS
    seed: int = 0
    pool: str = WORDNET_POOL
    pool_seed: int = 0
    quantile: float = 0.95
    saturate_above: float = 0.95
    fraction: float = 0.15

    def __post_init__(self) -> None:
        check_ranges(self, positive=("tau",), at_least_one=("groups",))
        self.selection()  # the pool settings are checked there

    def selection(self) -> PoolSelection:
        """How the bank is chosen from the pool."""
        return PoolSelection(self.pool, self.pool_seed, self.quantile, self.saturate_above, self.fraction)


class CSP(NegLabel):
    """NegLabel's grouped score over CSP's bank (see the module docstring).

    Takes ``config=CSPConfig(...)`` or its fields as keywords; feature-level construction,
    ``score_features``, ``save``/``load_detector`` and the torch backend are NegLabel's.
    """

    method_name: ClassVar[str] = "csp"
    config_class: ClassVar[type] = CSPConfig
    config: CSPConfig

    @classmethod
    def encode_id_names(cls, encoder: ClipEncoder, class_names: Sequence[str]) -> np.ndarray:
        """The ID label features: the mean of the 8 noun templates' raw features, normalised."""
        return encoder.encode_texts_averaged(list(class_names), CSP_NOUN_TEMPLATES, progress=False)
