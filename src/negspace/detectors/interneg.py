"""InterNeg (CVPR 2026; official code github.com/ZhikangXu0112/InterNeg): inter-modal negative
labels from few-shot ID prototypes, and test-time inversion of OOD-looking images.

The fixed bank is InterNeg's inter-modal selection (:mod:`negspace.corpus.interneg`). The score
is NegLabel's grouped score with ``G = 5`` (``G = 1`` for near-OOD) over the fixed bank and the
learned one (docs/methods/interneg.md)::

    S(v) = (1/G) Σ_g  Σ_i e^{cos(v,t_i)/τ} / (Σ_i e^{cos(v,t_i)/τ} + Σ_{j∈g} e^{cos(v,n_j)/τ})

At test time, each image of a batch scoring below ``beta = 0.35`` is *inverted*: a pseudo-token is
optimised through the frozen text tower so that its prompt's text feature matches the image
(:class:`negspace.encoders.inversion.PseudoTokenInverter`); the learned features that pass the
inter-modal test (farther from every prototype than the class's text) join a learned bank kept
sorted by their deviation ``d``, of which the top ``learned = 2000`` are scored; the whole batch
is then scored again with the enlarged bank. The learned bank is reset per stream (per OOD set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from negspace.corpus.interneg import intermodal_test
from negspace.detectors.base import check_ranges, resolve_config
from negspace.detectors.fewshot import FewShotDetector, images_to_invert
from negspace.detectors.neglabel import NegLabel
from negspace.reprs import with_config_repr
from negspace.scoring import DEFAULT_TAU

Inverter = Callable[[np.ndarray], np.ndarray]  # image features (B, D) -> learned unit text features (B, D)


@with_config_repr
@dataclass(frozen=True)
class InterNegConfig:
    """InterNeg's hyper-parameters, with the authors' defaults (ImageNet four-OOD and far-OOD
    scripts; ``groups=1`` for near-OOD): the score's ``tau``, ``groups`` and grouping ``seed``;
    the fixed bank's size ``negatives``; the inversion of images scoring below ``beta``
    (``steps`` AdamW steps at ``lr`` with ``weight_decay``, tokens from N(0, ``init_std``²),
    at most ``max_inverted`` images per batch, 0 = all); the ``learned`` negatives scored."""

    tau: float = DEFAULT_TAU
    groups: int = 5
    seed: int = 0
    negatives: int = 2000
    beta: float = 0.35
    learned: int = 2000
    steps: int = 10
    lr: float = 2e-2
    weight_decay: float = 0.01
    init_std: float = 0.02
    max_inverted: int = 0

    def __post_init__(self) -> None:
        check_ranges(
            self,
            positive=("tau",),
            at_least_one=("groups", "negatives", "steps"),
            non_negative=("learned", "max_inverted"),
            unit_interval=("beta",),
        )


class InterNeg(FewShotDetector):
    """InterNeg (see the module docstring). Built from the ID text features, the fixed bank's
    features, the class prototypes and an ``inverter`` (without one, or frozen, it scores with the
    banks it has and learns nothing)."""

    method_name = "interneg"
    STATE_ARRAYS = (("learned_features", np.float32), ("learned_deviation", np.float64))

    def __init__(
        self,
        id_text_features: np.ndarray,
        negative_features: np.ndarray,
        prototypes: np.ndarray,
        config: InterNegConfig | None = None,
        *,
        neg_labels: Sequence[str] | None = None,
        inverter: Inverter | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        self.config = resolve_config(InterNegConfig, config, params)
        self._set_banks(id_text_features, negative_features, prototypes, neg_labels)
        self.inverter = inverter
        self.backend_options = {"backend": backend, "device": device}
        self._initial: tuple[np.ndarray, np.ndarray] | None = None  # a loaded detector's learned bank
        self.reset()

    # -- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial learned bank (a new stream): empty, or what a loaded detector was
        saved with."""
        dim = self.id_text_features.shape[1]
        initial = self._initial or (np.zeros((0, dim), np.float32), np.zeros(0, np.float64))
        self.learned_features, self.learned_deviation = (array.copy() for array in initial)
        self.inverted = 0
        self._scorer: NegLabel | None = None
        if self.inverter is not None and hasattr(self.inverter, "reset"):
            self.inverter.reset()

    def negatives_scored(self) -> np.ndarray:
        """The bank scored now: the fixed negatives, then the top ``learned`` learned ones."""
        return np.concatenate([self.negative_features, self.learned_features[: self.config.learned]])

    def scorer(self) -> NegLabel:
        """NegLabel's grouped score over :meth:`negatives_scored` (rebuilt when the bank grows)."""
        if self._scorer is None:
            config = self.config
            negatives = self.negatives_scored()
            self._scorer = NegLabel(
                self.id_text_features,
                negatives,
                tau=config.tau,
                groups=config.groups,
                seed=config.seed,
                neg_labels=self.bank_labels(len(negatives) - len(self.negative_features)),
                backend=self.backend_options["backend"],
                device=self.backend_options["device"],
            )
        return self._scorer

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        scorer = self.scorer()
        return (scorer.neg_text_features, scorer.neg_labels) if scorer.neg_labels is not None else None

    def make_inverter(self) -> Inverter:
        """Pseudo-tokens from N(0, ``init_std``²), ``steps`` seeded AdamW steps over 80 templates."""
        from negspace.encoders.inversion import PseudoTokenInverter

        config = self.config
        assert self.encoder is not None  # unfreeze() checked it
        return PseudoTokenInverter(
            self.encoder,
            steps=config.steps,
            lr=config.lr,
            weight_decay=config.weight_decay,
            init_std=config.init_std,
            seed=config.seed,
        )

    # -- scoring ------------------------------------------------------------------------------------

    def score_features(self, image_features: np.ndarray, images: Sequence[Any] | None = None) -> np.ndarray:
        if len(image_features) == 0:
            return np.zeros(0, dtype=np.float64)
        scores = self.scorer().score_features(image_features)
        if not self.learns():
            return scores
        active = images_to_invert(scores, self.config.beta, self.config.max_inverted)
        if not len(active):
            return scores
        learned = np.asarray(self.inverter(np.asarray(image_features, np.float32)[active]), dtype=np.float32)
        self.inverted += len(active)
        self.add_learned(learned)
        return self.scorer().score_features(image_features)  # the whole batch again, with the enlarged bank

    def score_with_nearest(self, image_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Without learning, NegLabel's one-product rows over the scored bank (learned rows are
        named ``(learned negative N)``); while learning, the rows after the batch's update."""
        if self.learns():
            return super().score_with_nearest(image_features)
        return self.scorer().score_with_nearest(image_features)

    def add_learned(self, features: np.ndarray) -> int:
        """Keep the learned ``features`` that pass the inter-modal test, the bank sorted by
        deviation and bounded to ``learned`` rows; returns how many passed."""
        passes, deviation = intermodal_test(features, self.prototypes, self.baselines)
        if passes.any():
            merged = np.concatenate([self.learned_features, features[passes]])
            merged_d = np.concatenate([self.learned_deviation, deviation[passes]])
            order = np.argsort(-merged_d, kind="stable")[: self.config.learned]
            self.learned_features, self.learned_deviation = merged[order], merged_d[order]
        self._scorer = None  # the bank may have changed: its grouping is drawn again for its size
        return int(passes.sum())

    def get_params(self) -> dict[str, Any]:
        return {
            "n_classes": len(self.id_text_features),
            "n_negatives": len(self.negative_features),
            "n_learned": len(self.learned_features),
            "inverted": self.inverted,
            **asdict(self.config),
            **({"backend": self.backend_options["backend"]} if self.backend_options["backend"] != "numpy" else {}),
        }
