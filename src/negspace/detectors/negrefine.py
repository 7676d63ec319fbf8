"""NegRefine (ICCV 2025; official code github.com/ah-ansari/NegRefine): refined negative labels
and a multi-matching score.

The bank is CSP's pool, selected by the largest cosine to the ID classes, cleaned and filtered by
an LLM (:mod:`negspace.corpus.negrefine`). The score adds to NegLabel's grouped score the best
match of the image with a *pair* of labels, an ID name ``p`` and a negative ``n``
(docs/methods/negrefine.md)::

    S(v)  = S_NegLabel(v; G = 100, τ = 0.01) + w · MM(v)                    (w = 2)
    MM(v) = max_{p ∈ top-5 ID, n ∈ top-5 negatives}  σ( cos(v, t_pn)/τ − cos(v, t_n)/τ )

``top-5`` by cosine with the image (the negatives over the whole bank, the labels NegLabel's
grouping leaves out included); ``t_pn`` is the feature of ``"{p} and {n}"`` averaged over CSP's 8
noun templates (mean of raw features, normalised); σ is computed stably (the authors'
``exp/(exp + exp)`` overflows to NaN above a logit of about 88.7).

A pair's feature is a text forward: each is computed once, kept in a bounded in-memory table and
in the encoder's feature cache, so after warm-up a batch costs one NegLabel score, two top-5s and
a ``B x 25 x D`` gather.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from negspace.backend import to_numpy
from negspace.corpus.csp import WORDNET_POOL, PoolSelection
from negspace.detectors.base import check_ranges
from negspace.detectors.neglabel import DEFAULT_GROUPS, GroupedConfig, NegLabel
from negspace.detectors.saved import SavedDetector
from negspace.reprs import with_config_repr
from negspace.scoring import DEFAULT_TAU
from negspace.templates import CSP_NOUN_TEMPLATES, NEGREFINE_PAIR

if TYPE_CHECKING:
    from negspace.corpus.mining import MinedNegatives
    from negspace.encoders import ClipEncoder

PairEncoder = Callable[[list[str]], np.ndarray]  # texts -> (n, D) unit features


@with_config_repr
@dataclass(frozen=True)
class NegRefineConfig:
    """NegRefine's hyper-parameters, with the authors' defaults: NegLabel's ``tau``, ``groups``,
    ``seed``; the multi-matching ``match_weight`` (2) over the ``top_id`` (5) ID names and
    ``top_negatives`` (5) negatives; at most ``pair_cache`` pair features kept in memory; the
    initial selection (CSP's ``pool`` and ``pool_seed``; ratio = the largest cosine; the lowest
    ``fraction`` of each part) and the ``nearest`` ID names the LLM filter asks about."""

    tau: float = DEFAULT_TAU
    groups: int = DEFAULT_GROUPS
    seed: int = 0
    match_weight: float = 2.0
    top_id: int = 5
    top_negatives: int = 5
    pair_cache: int = 100_000  # about 200 MB at D = 512
    pool: str = WORDNET_POOL
    pool_seed: int = 0
    fraction: float = 0.15
    nearest: int = 10

    def __post_init__(self) -> None:
        check_ranges(
            self,
            positive=("tau",),
            at_least_one=("groups", "top_id", "top_negatives", "nearest", "pair_cache"),
            non_negative=("match_weight",),
        )
        self.selection()

    def selection(self) -> PoolSelection:
        """The initial selection: CSP's pool, ID nouns removed, ranked by the largest cosine."""
        return PoolSelection(
            self.pool, self.pool_seed, quantile=1.0, saturate_above=0.95, fraction=self.fraction, remove_id_nouns=True
        )


def stable_sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-x)`` without overflow, as ``exp(-log(1 + e^-x))``."""
    sigmoid: np.ndarray = np.exp(-np.logaddexp(0.0, -x))
    return sigmoid


class NegRefine(NegLabel):
    """NegLabel's grouped score plus NegRefine's multi-matching term (see the module docstring).

    Besides NegLabel's arguments it needs the ID ``class_names`` and the ``neg_labels`` (the pair
    texts are made of them) and a way to encode pair texts: ``pair_encoder`` (texts to unit
    features), or the ``encoder`` attribute (a :class:`~negspace.encoders.ClipEncoder`: CSP's 8
    noun templates, averaged), which ``negspace score`` and ``load_detector(..., encoder=)`` set.
    """

    method_name: ClassVar[str] = "negrefine"
    config_class: ClassVar[type] = NegRefineConfig
    config: NegRefineConfig
    class_names: list[str]  # required here (the pair texts are made of them)
    neg_labels: list[str]

    def __init__(
        self,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        config: GroupedConfig | None = None,
        *,
        class_names: Sequence[str] | None = None,
        neg_labels: Sequence[str] | None = None,
        pair_encoder: PairEncoder | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        super().__init__(
            id_text_features, neg_text_features, config, neg_labels=neg_labels, backend=backend, device=device, **params
        )
        if class_names is None or neg_labels is None:
            raise ValueError("NegRefine needs the ID class names and the negative labels: its pairs are their texts")
        if len(class_names) != len(self.id_text_features):
            raise ValueError(f"{len(class_names)} class names for {len(self.id_text_features)} ID features")
        self.class_names = list(class_names)
        self.pair_encoder = pair_encoder
        self._pairs = PairTable(self.config.pair_cache, self.id_text_features.shape[1])
        self._kept = len(self.group_index_)  # the bank's first labels, those NegLabel's groups hold

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        config: GroupedConfig | None = None,
        *,
        class_names: Sequence[str] | None = None,
        neg_labels: Sequence[str] | None = None,
        pair_encoder: PairEncoder | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> NegRefine:
        """Build from ID and negative text features, their names and a pair encoder."""
        return cls(
            id_text_features,
            neg_text_features,
            config,
            class_names=class_names,
            neg_labels=neg_labels,
            pair_encoder=pair_encoder,
            backend=backend,
            device=device,
            **params,
        )

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
    ) -> NegRefine:
        """Build from a bank (e.g. :func:`negspace.corpus.negrefine.refine_bank`); ID names are
        encoded as :meth:`encode_id_names` says, pairs with ``encoder``."""
        detector = cls(
            cls.encode_id_names(encoder, class_names),
            mined.features,
            config,
            class_names=class_names,
            neg_labels=mined.labels,
            backend=backend,
            device=device,
            **params,
        )
        detector.encoder = encoder
        return detector

    @classmethod
    def encode_id_names(cls, encoder: ClipEncoder, class_names: Sequence[str]) -> np.ndarray:
        """The ID label features: the mean of CSP's 8 noun templates' raw features, normalised."""
        return encoder.encode_texts_averaged(list(class_names), CSP_NOUN_TEMPLATES, progress=False)

    # -- scoring ----------------------------------------------------------------------------------

    def score_features(self, image_features: Any) -> np.ndarray:
        return self._score_batch(image_features)[0]

    def score_with_nearest(self, image_features: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The scores, each image's nearest ID class and nearest negative label (the first of the
        top negatives the multi-matching already found), from the score's own products."""
        scores, id_cos, top_neg, top_neg_cos = self._score_batch(image_features)
        if len(scores) == 0:
            return scores, np.zeros(0, dtype=np.int64), []
        nearest = np.take_along_axis(top_neg, top_neg_cos.argmax(axis=1)[:, None], axis=1)[:, 0]
        return scores, id_cos.argmax(axis=1), [self.neg_labels[i] for i in nearest]

    def _score_batch(self, image_features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The scores, the ID cosines and each image's top negatives (bank indices, cosines), on
        the host."""
        if len(image_features) == 0:
            empty = np.zeros((0, 0), dtype=np.int64)
            return np.zeros(0, dtype=np.float64), np.zeros((0, len(self.id_text_features))), empty, empty
        device_image, device_id_cos, grouped_cos = self._cosines(image_features)
        base = to_numpy(self.backend.ops.grouped_id_mass(device_id_cos, grouped_cos, self.groups, self.tau))
        image = np.asarray(to_numpy(device_image, np.float32))
        id_cos = np.asarray(to_numpy(device_id_cos, np.float32))
        top_neg, top_neg_cos = self._top_negatives(image, np.asarray(to_numpy(grouped_cos, np.float32)))
        matching = self.multi_matching(image, id_cos, top_neg, top_neg_cos)
        return base + self.config.match_weight * matching, id_cos, top_neg, top_neg_cos

    def _top_negatives(self, image: np.ndarray, grouped_cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's ``top_negatives`` over the whole bank (bank indices, and their cosines):
        from the grouped product and the few labels the grouping leaves out, without putting the
        product back in bank order."""
        k = self.config.top_negatives
        top = _top(grouped_cos, k)
        candidates = [self.group_index_[top]]
        cosines = [np.take_along_axis(grouped_cos, top, axis=1)]
        if self._kept < len(self.neg_text_features):
            tail = image @ self.neg_text_features[self._kept :].T
            top = _top(tail, k)
            candidates.append(top + self._kept)
            cosines.append(np.take_along_axis(tail, top, axis=1))
        index, cosine = np.concatenate(candidates, axis=1), np.concatenate(cosines, axis=1)
        best = _top(cosine, k)
        return np.take_along_axis(index, best, axis=1), np.take_along_axis(cosine, best, axis=1)

    def multi_matching(
        self, image: np.ndarray, id_cos: np.ndarray, top_neg: np.ndarray, top_neg_cos: np.ndarray
    ) -> np.ndarray:
        """``MM(v)`` per image: the best pair of the top ID names and top negatives (float64)."""
        top_id = _top(id_cos, self.config.top_id)
        p = np.repeat(top_id, top_neg.shape[1], axis=1)  # (B, 25): every ID name with every negative
        n = np.tile(top_neg, (1, top_id.shape[1]))
        own_cos = np.tile(top_neg_cos, (1, top_id.shape[1])).astype(np.float64)
        pair_cos = np.einsum("bd,bkd->bk", image, self.pair_features(p, n), dtype=np.float64)
        best: np.ndarray = stable_sigmoid((pair_cos - own_cos) / self.tau).max(axis=1)
        return best

    def pair_features(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The features of the pairs ``(p[i, j], n[i, j])``, encoding those not yet kept at once."""
        keys = (p.astype(np.int64) * len(self.neg_text_features) + n).ravel()
        rows = self._pairs.rows(keys)
        found = rows >= 0
        if found.all():  # warm: look-ups and one gather
            kept: np.ndarray = self._pairs.features[rows].reshape(*p.shape, -1)
            return kept
        features = np.empty((len(keys), self.id_text_features.shape[1]), dtype=np.float32)
        features[found] = self._pairs.features[rows[found]]
        missing, where = np.unique(keys[~found], return_inverse=True)
        n_neg = len(self.neg_text_features)
        texts = [
            NEGREFINE_PAIR.format(self.class_names[key // n_neg], self.neg_labels[key % n_neg])
            for key in missing.tolist()
        ]
        encoded = np.asarray(self._encode_pairs(texts), dtype=np.float32)
        features[~found] = encoded[where]
        self._pairs.add(missing, encoded, keep=keys[found])
        return features.reshape(*p.shape, -1)

    def _encode_pairs(self, texts: list[str]) -> np.ndarray:
        if self.pair_encoder is not None:
            return np.asarray(self.pair_encoder(texts), dtype=np.float32)
        if self.encoder is None:
            raise ValueError(
                "NegRefine encodes its label pairs with the CLIP text encoder: build it with a model, "
                "or load it with load_detector(folder, encoder=...)"
            )
        return self.encoder.encode_texts_averaged(texts, CSP_NOUN_TEMPLATES, progress=False)

    # -- saving -------------------------------------------------------------------------------------

    def to_saved(self) -> SavedDetector:
        return SavedDetector(
            self.method_name,
            asdict(self.config),
            {"id_text_features": self.id_text_features, "neg_text_features": self.neg_text_features},
            {"neg_labels": self.neg_labels, "class_names": self.class_names},
        )

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> NegRefine:
        return cls(
            saved.arrays["id_text_features"],
            saved.arrays["neg_text_features"],
            class_names=saved.extra.get("class_names"),
            neg_labels=saved.extra.get("neg_labels"),
            backend=backend,
            device=device,
            **saved.params,
        )

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "pairs_in_memory": len(self._pairs)}


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest values (in no order)."""
    k = min(k, values.shape[1])
    return np.argpartition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k :]


class PairTable:
    """Pair features in one array of at most ``capacity`` rows, found by an integer key
    (``ID index x bank size + negative index``) with a binary search; when full, the least
    recently used rows are replaced."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.capacity = capacity
        self.features = np.empty((0, dim), dtype=np.float32)
        self.keys = np.empty(0, dtype=np.int64)  # per row; -1 = empty
        self.last_used = np.empty(0, dtype=np.int64)
        self.clock = 0
        self._sorted_keys = self.keys
        self._sorted_rows = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(np.count_nonzero(self.keys >= 0))

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key (-1 where it is not kept); the rows found count as used now."""
        if not len(self._sorted_keys):
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        rows = np.where(self._sorted_keys[at] == keys, self._sorted_rows[at], -1)
        self.clock += 1
        self.last_used[rows[rows >= 0]] = self.clock
        return rows

    def add(self, keys: np.ndarray, features: np.ndarray, keep: np.ndarray) -> None:
        """Keep ``features`` under ``keys``, replacing the least recently used rows not in ``keep``
        (the keys the batch also uses) once the table is full: at most ``capacity`` rows, as many
        of ``keys`` as fit."""
        if len(self.features) < self.capacity:  # grow (amortised: the array doubles up to the capacity)
            size = min(self.capacity, max(2 * len(self.features), len(self.features) + len(keys)))
            grow = size - len(self.features)
            self.features = np.concatenate([self.features, np.zeros((grow, self.features.shape[1]), np.float32)])
            self.keys = np.concatenate([self.keys, np.full(grow, -1, np.int64)])
            self.last_used = np.concatenate([self.last_used, np.full(grow, -1, np.int64)])
        candidates = np.flatnonzero(~np.isin(self.keys, keep))
        order = candidates[np.argsort(self.last_used[candidates], kind="stable")]  # empty rows (-1) first
        take = min(len(keys), len(order))  # a batch that needs more than fits keeps what fits
        rows = order[:take]
        self.features[rows] = features[:take]
        self.keys[rows] = keys[:take]
        self.clock += 1
        self.last_used[rows] = self.clock
        self._sorted_rows = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[self._sorted_rows]
