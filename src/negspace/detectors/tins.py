"""TINS (arXiv 2605.10756, 2026; official code github.com/zxk1212/tins, ``eval_tins_w_init.py``):
InterNeg's successor, with a scaled group score and a bounded dynamic bank of inverted negatives.

Fixed bank: InterNeg's inter-modal selection (``M = 2000``, at least one label of a part that has
survivors). The score averages, over ``G = 5`` seeded groups of the bank (fixed, then dynamic), the
ID mass against ``C`` times the group's *mean* negative exponential (docs/methods/tins.md)::

    S(v) = (1/G) Σ_g  A / (A + C · mean_{j∈g} e^{cos(v,n_j)/τ}),     A = Σ_c e^{cos(v,t_c)/τ}

Images scoring below ``beta = 0.3`` are inverted
(:class:`negspace.encoders.inversion.WordInitialisedInverter`); the learned features passing the
inter-modal test join the dynamic bank, kept sorted by deviation and bounded to ``K = 2000``; what
overflows goes to a buffer of ``buffer = 2000``; a full buffer pools its better half with the bank
and a seeded random ``K`` of the pool become the bank (unsorted until the next update). The batch
is scored again when some learned feature was kept. Bank and buffer reset per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from negspace.corpus.interneg import intermodal_test
from negspace.detectors.base import LabelledColumns, check_ranges, nearest_texts, resolve_config
from negspace.detectors.fewshot import FewShotDetector, images_to_invert
from negspace.reprs import with_config_repr
from negspace.scoring import DEFAULT_TAU, as_unit_rows, group_order, log_sum_exp, torch_randperm

Inverter = Callable[[np.ndarray], np.ndarray]


@with_config_repr
@dataclass(frozen=True)
class TINSConfig:
    """TINS's hyper-parameters, with the authors' defaults (ImageNet four-OOD): the score's
    ``tau``, ``groups`` and grouping ``seed``; the fixed bank's size ``negatives``; the inversion
    of images below ``beta`` (``steps`` AdamW steps at ``lr`` with ``weight_decay``, prototype
    weight ``lam``; at most ``max_inverted`` images per batch, 0 = all); the dynamic bank's size
    ``learned`` and its overflow ``buffer``."""

    tau: float = DEFAULT_TAU
    groups: int = 5
    seed: int = 0
    negatives: int = 2000
    beta: float = 0.3
    learned: int = 2000
    buffer: int = 2000
    steps: int = 30
    lr: float = 2e-2
    weight_decay: float = 1e-2
    lam: float = 0.3
    max_inverted: int = 0

    def __post_init__(self) -> None:
        check_ranges(
            self,
            positive=("tau",),
            at_least_one=("groups", "negatives", "steps", "learned", "buffer"),
            non_negative=("max_inverted", "lam"),
            unit_interval=("beta",),
        )


def scaled_group_score(
    id_cos: np.ndarray, grouped_cos: np.ndarray, groups: int, tau: float = DEFAULT_TAU
) -> np.ndarray:
    """TINS's score in log-space: ``mean_g exp(log A − logaddexp(log A, LSE_g − log m + log C))``
    for ``grouped_cos`` of ``groups`` consecutive blocks of ``m`` columns (float64)."""
    n_classes = id_cos.shape[1]
    log_a = log_sum_exp(np.asarray(id_cos, np.float64) / tau)
    blocks = np.asarray(grouped_cos, np.float64).reshape(len(grouped_cos), groups, -1) / tau
    log_mean = log_sum_exp(blocks) - np.log(blocks.shape[2])
    scores: np.ndarray = np.exp(log_a[:, None] - np.logaddexp(log_a[:, None], log_mean + np.log(n_classes))).mean(
        axis=1
    )
    return scores


@dataclass(frozen=True)
class _GroupedBank:
    """The scored bank in group order (``features``, from bank ``rows``) and the ``tail`` rows the
    grouping leaves out (``tail_rows``): not scored, but an image's nearest label may be one."""

    features: np.ndarray
    rows: np.ndarray
    tail: np.ndarray
    tail_rows: np.ndarray


class TINS(FewShotDetector):
    """TINS (see the module docstring): from the ID text features, the fixed bank's features, the
    class prototypes and an ``inverter`` (without one, or frozen, it scores with the banks it
    has)."""

    method_name = "tins"
    inversion_needs_words = True  # each token starts from a word of the bank
    STATE_ARRAYS = (("bank", np.float32), ("bank_d", np.float64), ("buffer", np.float32), ("buffer_d", np.float64))

    def __init__(
        self,
        id_text_features: np.ndarray,
        negative_features: np.ndarray,
        prototypes: np.ndarray,
        config: TINSConfig | None = None,
        *,
        neg_labels: Sequence[str] | None = None,
        inverter: Inverter | None = None,
        **params: Any,
    ) -> None:
        self.config = resolve_config(TINSConfig, config, params)
        self._set_banks(id_text_features, negative_features, prototypes, neg_labels)
        self.inverter = inverter
        self._initial: tuple[np.ndarray, ...] | None = None  # a loaded detector's bank and buffer
        self.reset()

    def reset(self) -> None:
        """Back to the initial dynamic bank and buffer (a new stream): empty, or what a loaded
        detector was saved with."""
        dim = self.id_text_features.shape[1]
        empty = (np.zeros((0, dim), np.float32), np.zeros(0))
        initial = self._initial or (*empty, *empty)
        self.bank, self.bank_d, self.buffer, self.buffer_d = (array.copy() for array in initial)
        self.inverted = 0
        self._grouped: _GroupedBank | None = None

    def _grouped_bank(self) -> _GroupedBank:
        """The scored bank ``[fixed; learned]`` in group order (rebuilt when the bank changes)."""
        if self._grouped is None:
            negatives = np.concatenate([self.negative_features, self.bank])
            rows = group_order(len(negatives), self.config.groups, self.config.seed)
            tail_rows = np.arange(len(rows), len(negatives))
            self._grouped = _GroupedBank(negatives[rows], rows, negatives[tail_rows], tail_rows)
        return self._grouped

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        labels = self.bank_labels(len(self.bank))
        return (np.concatenate([self.negative_features, self.bank]), labels) if labels is not None else None

    def make_inverter(self) -> Inverter:
        """Tokens initialised from the bank's words, ``steps`` AdamW steps with the prototype penalty."""
        from negspace.encoders.inversion import WordInitialisedInverter

        config = self.config
        assert self.encoder is not None and self.neg_labels is not None  # unfreeze() checked both
        return WordInitialisedInverter(
            self.encoder,
            self.neg_labels,
            self.prototypes,
            steps=config.steps,
            lr=config.lr,
            weight_decay=config.weight_decay,
            lam=config.lam,
        )

    def score_once(self, image_features: np.ndarray) -> np.ndarray:
        """The score with the banks as they are (no learning)."""
        return self._score_once_with_products(image_features)[0]

    def _score_once_with_products(
        self, image_features: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`score_once`, the unit image rows and their cosines to the ID texts and to the
        bank in group order."""
        image = as_unit_rows(image_features, "image features", self.id_text_features.shape[1])
        id_cos, grouped_cos = image @ self.id_text_features.T, image @ self._grouped_bank().features.T
        return scaled_group_score(id_cos, grouped_cos, self.config.groups, self.config.tau), image, id_cos, grouped_cos

    def score_with_nearest(self, image_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Without learning, the scores, nearest ID class and nearest negative (learned rows named
        ``(learned negative N)``) from the score's products; while learning, the rows after the
        batch's update."""
        if self.learns():
            return super().score_with_nearest(image_features)
        if len(image_features) == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64), []
        scores, image, id_cos, grouped_cos = self._score_once_with_products(image_features)
        labels = self.bank_labels(len(self.bank))
        if labels is None:
            return scores, id_cos.argmax(axis=1), [""] * len(scores)
        grouped = self._grouped_bank()
        blocks = [
            LabelledColumns(grouped_cos, labels, grouped.rows),
            LabelledColumns(image @ grouped.tail.T, labels, grouped.tail_rows),
        ]
        return scores, id_cos.argmax(axis=1), nearest_texts(blocks, len(scores))

    def score_features(self, image_features: np.ndarray, images: Sequence[Any] | None = None) -> np.ndarray:
        if len(image_features) == 0:
            return np.zeros(0, dtype=np.float64)
        scores = self.score_once(image_features)
        if not self.learns():
            return scores
        active = images_to_invert(scores, self.config.beta, self.config.max_inverted)
        if not len(active):
            return scores
        learned = np.asarray(self.inverter(np.asarray(image_features, np.float32)[active]), np.float32)
        self.inverted += len(active)
        if not self.add_learned(learned):
            return scores
        return self.score_once(image_features)

    def add_learned(self, features: np.ndarray) -> int:
        """The learned features passing the inter-modal test into the dynamic bank (sorted by
        deviation, at most ``learned``); the overflow into the buffer; a full buffer's better half
        pooled with the bank, of which a seeded random ``learned`` stay. Returns how many passed."""
        passes, deviation = intermodal_test(features, self.prototypes, self.baselines)
        if not passes.any():
            return 0
        config = self.config
        merged = np.concatenate([self.bank, features[passes]])
        merged_d = np.concatenate([self.bank_d, deviation[passes]])
        order = np.argsort(-merged_d, kind="stable")
        self.bank, self.bank_d = merged[order[: config.learned]], merged_d[order[: config.learned]]
        overflow = order[config.learned :]
        if len(overflow):
            self.buffer = np.concatenate([self.buffer, merged[overflow]])
            self.buffer_d = np.concatenate([self.buffer_d, merged_d[overflow]])
        if len(self.buffer) >= config.buffer:
            best = np.argsort(-self.buffer_d, kind="stable")[: len(self.buffer) // 2]
            pool = np.concatenate([self.bank, self.buffer[best]])
            pool_d = np.concatenate([self.bank_d, self.buffer_d[best]])
            keep = torch_randperm(len(pool), config.seed)  # the authors' torch.randperm stream
            keep = keep[: min(config.learned, len(pool))]
            self.bank, self.bank_d = pool[keep], pool_d[keep]  # unsorted until the next update, as the authors'
            self.buffer, self.buffer_d = self.buffer[:0], self.buffer_d[:0]
        self._grouped = None
        return int(passes.sum())

    @classmethod
    def _backend_options(cls, backend: str, device: str) -> dict[str, str]:
        return {}  # TINS scores with NumPy

    def get_params(self) -> dict[str, Any]:
        return {
            "n_classes": len(self.id_text_features),
            "n_negatives": len(self.negative_features),
            "n_learned": len(self.bank),
            "n_buffered": len(self.buffer),
            "inverted": self.inverted,
            **asdict(self.config),
        }
