"""AdaNeg: adaptive negative proxies built from test features.

Paper: Zhang & Zhang, "AdaNeg: Adaptive Negative Proxy Guided OOD Detection with
Vision-Language Models", NeurIPS 2024 (official code github.com/YBZh/OpenOOD-VLM). Formulas,
defaults and departures: docs/methods/adaneg.md.

Every label (the ``K`` ID classes and the ``M`` NegLabel negatives) owns a memory of ``L = 10``
slots; slot 0 holds the label's text feature and is never replaced, so at most ``L − 1`` test
features are stored per label. ``S_nl`` is the section-1 score over the negatives grouped with
``G = 5`` (NegLabel's seeded permutation, :func:`negspace.scoring.group_order`).

**Caching, before scoring.** With ``γ = 0.5``, ``g = 0.5``: a test feature with
``S_nl > γ + g(1 − γ)`` is cached under its predicted ID class (argmax of the ID logits), one with
``S_nl < γ − g·γ`` under its argmax negative label (over all ``M``). A full memory replaces its
highest-entropy slot (slot 0 excluded; ties: the lowest slot index) when the newcomer's entropy
is lower. Entropy is that of the softmax of the ID logits (ID-cached) or of the negative logits
(OOD-cached), ``cos/τ``. Samples are written one at a time in batch order; this is vectorised
by *rounds*: round ``r`` writes, for every label at once, the ``r``-th newcomer of that label in
the batch (labels within a round are distinct, so their updates commute). The number of rounds
is the largest number of newcomers one label gets in a batch, not the number of samples.

**Proxies.** Task-adaptive (default): ``p_l = normalise(mean of the filled slots of l)``.
Sample-adaptive: ``p_l(v) = normalise(Σ_s w_s m_{l,s})`` with ``w_s = exp(−5.5·(1 − cos(v, m_{l,s})))``
over the filled slots; its cosine is computed as ``Σ_s w_s c_s / sqrt(wᵀ G_l w)`` with the
per-label Gram matrix ``G_l`` (kept up to date in the state), so no ``B × N × D`` tensor is built.

**Score**::

    S(v) = S_G5(v; ID proxies, negative proxies) + 0.1 · S_nl(v)

i.e. the grouped section-1 score with proxies in place of the text features, plus ``nl_weight``
times NegLabel's. Memory is a fixed ``(K + M, L, D)`` array: it does not grow with the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace.backend import resolve_backend, to_numpy
from negspace.detectors.base import (
    LabelledColumns,
    OnlineDetector,
    nearest_texts,
    resolve_config,
    row_argmax,
)
from negspace.detectors.saved import SavedDetector, constructor_params
from negspace.reprs import with_config_repr
from negspace.scoring import DEFAULT_TAU, as_unit_rows, group_order, softmax_entropy  # noqa: F401  (re-exported)
from negspace.templates import ID_TEMPLATE

if TYPE_CHECKING:
    from negspace.corpus.mining import MinedNegatives, MiningConfig
    from negspace.encoders import ClipEncoder

PROXIES = ("task", "sample")


# --------------------------------------------------------------------------- pure functions


def write_to_memory(
    memory: np.ndarray,
    filled: np.ndarray,
    entropy: np.ndarray,
    labels: np.ndarray,
    entropies: np.ndarray,
    features: np.ndarray,
) -> np.ndarray:
    """Write samples into the memories, in order, with the entropy replacement rule (in place).

    Args:
        memory: ``(N, L, D)`` slots; slot 0 is the label's text feature.
        filled: ``(N,)`` filled slots per label (>= 1, slot 0 included).
        entropy: ``(N, L)`` entropies of the slots (slot 0 is 0).
        labels, entropies, features: the samples, in batch order.

    Returns:
        The labels whose memory changed (unique, sorted).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return labels
    slots = memory.shape[1]
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - run_start
    touched = np.zeros(len(labels), dtype=bool)
    for r in range(int(rank.max()) + 1):  # rounds, not samples: labels in a round are distinct
        pick = np.flatnonzero(rank == r)
        lab, ent, feat = labels[pick], entropies[pick], features[pick]
        free = filled[lab] < slots
        if np.any(free):
            fl, slot = lab[free], filled[lab[free]]
            memory[fl, slot] = feat[free]
            entropy[fl, slot] = ent[free]
            filled[fl] += 1
            touched[pick[free]] = True
        full = ~free
        if slots > 1 and np.any(full):
            fl = lab[full]
            worst = 1 + np.argmax(entropy[fl, 1:], axis=1)  # slot 0 is never replaced
            better = ent[full] < entropy[fl, worst]
            fl, worst = fl[better], worst[better]
            memory[fl, worst] = feat[full][better]
            entropy[fl, worst] = ent[full][better]
            touched[pick[np.flatnonzero(full)[better]]] = True
    return np.unique(labels[touched])


def task_proxies(memory: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """``normalise(mean of the filled slots)`` per label, ``(n, D)`` float32."""
    mask = np.arange(memory.shape[1])[None, :] < filled[:, None]
    total = np.einsum("nl,nld->nd", mask.astype(memory.dtype), memory)
    proxies: np.ndarray = (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)
    return proxies


def sample_adaptive_cosines(
    features: np.ndarray,
    memory: np.ndarray,
    filled: np.ndarray,
    gram: np.ndarray,
    scale: float = 5.5,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """``cos(v, p_l(v))`` for sample-adaptive proxies, ``(B, len(labels))`` float64.

    ``p_l(v) ∝ Σ_s w_s m_{l,s}``, ``w_s = exp(−scale·(1 − cos(v, m_{l,s})))`` over the filled slots
    of label ``l`` (all labels when ``labels`` is None). Only filled slots are multiplied with the
    batch; a label that holds just its text feature costs one dot product (its proxy is the text).
    """
    n_all, slots, dim = memory.shape
    labels = np.arange(n_all) if labels is None else np.asarray(labels)
    single = filled[labels] <= 1
    if np.any(single):  # a label holding only its text feature: the proxy is that feature
        out = np.empty((len(features), len(labels)), dtype=np.float64)
        out[:, single] = features @ memory[labels[single], 0].T
        if not np.all(single):
            out[:, ~single] = sample_adaptive_cosines(features, memory, filled, gram, scale, labels[~single])
        return out
    n = len(labels)
    mask = np.arange(slots)[None, :] < filled[labels][:, None]  # (n, L)
    local = np.flatnonzero(mask)  # positions in the (n, L) grid
    rows = labels[local // slots] * slots + local % slots  # rows of memory.reshape(-1, D)
    c = np.zeros((len(features), n * slots), dtype=np.float64)
    c[:, local] = features @ memory.reshape(n_all * slots, dim)[rows].T
    c = c.reshape(len(features), n, slots)
    w = np.exp(-scale * (1.0 - c)) * mask[None]
    numerator = np.sum(w * c, axis=2)
    # ||Σ_s w_s m_s||² = wᵀ G w per (sample, label), as one batched matmul over labels.
    w_by_label = np.ascontiguousarray(w.transpose(1, 0, 2))  # (n, B, L)
    gw = np.matmul(w_by_label, gram[labels].astype(np.float64))  # G is symmetric
    norm2 = np.sum(gw * w_by_label, axis=2).T
    cosines: np.ndarray = numerator / np.sqrt(np.maximum(norm2, 1e-300))
    return cosines


# --------------------------------------------------------------------------- state


@with_config_repr
@dataclass(frozen=True)
class AdaNegConfig:
    """AdaNeg's hyper-parameters, with the authors' defaults (docs/methods/adaneg.md)."""

    tau: float = DEFAULT_TAU
    memory_length: int = 10  # slots per label; slot 0 holds its text feature
    gamma: float = 0.5  # caching threshold on S_nl
    g: float = 0.5  # caching margin
    groups: int = 5  # groups of the score
    proxy: str = "task"  # task- or sample-adaptive proxies
    sample_weight_scale: float = 5.5  # sample-adaptive weights exp(-scale * (1 - cos))
    nl_weight: float = 0.1  # weight of NegLabel's score in the sum
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.memory_length < 1:
            raise ValueError(f"memory_length must be >= 1 (slot 0 is the text feature), got {self.memory_length}")
        if self.proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {PROXIES}, got {self.proxy!r}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.g <= 1.0:
            raise ValueError(f"gamma and g must be in [0, 1], got {self.gamma} and {self.g}")
        if self.groups < 1:
            raise ValueError(f"groups must be at least 1, got {self.groups}")


@dataclass
class AdaNegState:
    """The label memories; fixed size whatever the stream length."""

    memory: np.ndarray  # (K + M, L, D) float32
    filled: np.ndarray  # (K + M,) int64, slot 0 included
    entropy: np.ndarray  # (K + M, L) float64
    proxies: np.ndarray  # (K + M, D) float32, task-adaptive proxies
    gram: np.ndarray | None  # (K + M, L, L) float32, sample-adaptive mode only
    scoring_proxies: Any = None  # the scored labels' proxies in scoring order, on the backend (task mode)
    batches: int = 0
    cached: int = 0


# --------------------------------------------------------------------------- detector


class AdaNeg(OnlineDetector):
    """Adaptive negative proxies (see the module docstring).

    Takes ``config=AdaNegConfig(...)`` or its fields as keywords (``proxy="sample"``).

    Attributes:
        state_: the current :class:`AdaNegState`; ``reset()`` rebuilds the initial one exactly.
        group_index_: the seeded group order of the negative bank (``G = groups``).
    """

    def __init__(
        self,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        config: AdaNegConfig | None = None,
        *,
        chunk_size: int = 1000,
        neg_labels: Sequence[str] | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        self.config = resolve_config(AdaNegConfig, config, params)
        groups = self.config.groups
        self.backend = resolve_backend(backend, device)
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        dim = self.id_text_features.shape[1]
        self.neg_text_features = as_unit_rows(neg_text_features, "negative text features", dim)
        n_neg = len(self.neg_text_features)
        if not 1 <= groups <= n_neg:
            raise ValueError(f"groups must be between 1 and the {n_neg} negative labels, got {groups}")
        if neg_labels is not None and len(neg_labels) != n_neg:
            raise ValueError(f"{len(neg_labels)} negative labels for {n_neg} negative features")
        c = self.config
        self.tau, self.memory_length, self.gamma, self.g, self.groups = c.tau, c.memory_length, c.gamma, c.g, groups
        self.proxy, self.sample_weight_scale, self.nl_weight, self.seed = (
            c.proxy,
            c.sample_weight_scale,
            c.nl_weight,
            c.seed,
        )
        self.chunk_size = int(chunk_size)
        self.neg_labels = list(neg_labels) if neg_labels is not None else None
        self.group_index_ = group_order(n_neg, self.groups, self.seed)
        # Scoring order: the ID labels, the negatives in group order, then the n mod G negatives the
        # groups leave out. The texts (and the task proxies) are stored so, so that one GEMM gives
        # a batch's ID cosines and grouped negative cosines as column slices, with no gather.
        kept = len(self.group_index_)
        self._neg_order = np.concatenate([self.group_index_, np.arange(kept, n_neg)])
        self._text = self.backend.asarray(
            np.concatenate([self.id_text_features, self.neg_text_features[self._neg_order]])
        )
        self._scored_labels = np.concatenate([np.arange(self.n_classes), self.n_classes + self.group_index_])
        self._scoring_position = np.full(self.n_classes + n_neg, -1, dtype=np.int64)
        self._scoring_position[self._scored_labels] = np.arange(len(self._scored_labels))
        # No copy of the initial state is kept (it is as large as the state): reset() rebuilds it.
        self.state_ = self._build_initial_state()

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        config: AdaNegConfig | None = None,
        *,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> AdaNeg:
        """Build from ``(K, D)`` ID and ``(M, D)`` negative text features (no encoder needed).

        ``backend="torch"`` runs the products with the text features and the task-adaptive
        proxies on ``device``; the memories stay NumPy on the host, and so do the per-slot
        products of sample-adaptive proxies.
        """
        return cls(id_text_features, neg_text_features, config, backend=backend, device=device, **params)

    @classmethod
    def from_encoder(
        cls,
        encoder: ClipEncoder,
        class_names: Sequence[str],
        mined: MinedNegatives | None = None,
        mining_config: MiningConfig | None = None,
        progress: bool = True,
        **params: Any,
    ) -> AdaNeg:
        """Build on NegLabel's mined negatives (mined here with ``mining_config`` if not given).

        ID names are encoded with ``The nice {}.``; ``params`` are :meth:`from_features`'s.
        """
        if mined is None:
            from negspace.cache import default_cache_dir
            from negspace.corpus.mining import MiningConfig, mine_negative_labels

            mined = mine_negative_labels(
                encoder, class_names, mining_config or MiningConfig(), cache_dir=default_cache_dir(), progress=progress
            )
        id_features = encoder.encode_texts(list(class_names), template=ID_TEMPLATE, progress=progress)
        detector = cls(id_features, mined.features, neg_labels=mined.labels, **params)
        detector.encoder = encoder
        detector.class_names = list(class_names)
        return detector

    # ------------------------------------------------------------------ internals

    @property
    def n_classes(self) -> int:
        return len(self.id_text_features)

    def _build_initial_state(self) -> AdaNegState:
        text = np.concatenate([self.id_text_features, self.neg_text_features])
        n, dim = text.shape
        memory = np.zeros((n, self.memory_length, dim), dtype=np.float32)
        memory[:, 0] = text
        gram = None
        if self.proxy == "sample":
            gram = np.zeros((n, self.memory_length, self.memory_length), dtype=np.float32)
            gram[:, 0, 0] = np.einsum("nd,nd->n", text, text)
        proxies = text.copy()
        return AdaNegState(
            memory=memory,
            filled=np.ones(n, dtype=np.int64),
            entropy=np.zeros((n, self.memory_length), dtype=np.float64),
            proxies=proxies,
            gram=gram,
            scoring_proxies=self.backend.asarray(proxies[self._scored_labels]) if self.proxy == "task" else None,
        )

    def _cache(self, features: np.ndarray, id_cos: Any, neg_cos: Any, s_nl: np.ndarray) -> None:
        """Write the batch's confident samples into the memories (``features`` on the host,
        the cosines on the backend; only the chosen rows' labels and entropies come back)."""
        state, backend = self.state_, self.backend
        is_id = s_nl > self.gamma + self.g * (1.0 - self.gamma)
        is_ood = s_nl < self.gamma - self.g * self.gamma
        chosen = np.flatnonzero(is_id | is_ood)  # batch order
        if len(chosen) == 0:
            return
        labels = np.empty(len(chosen), dtype=np.int64)
        entropies = np.empty(len(chosen), dtype=np.float64)
        as_id = is_id[chosen]
        for mask, cos, label_of in ((as_id, id_cos, None), (~as_id, neg_cos, self.n_classes + self._neg_order)):
            if mask.any():
                rows = cos[backend.index(chosen[mask])]
                best = to_numpy(rows.argmax(1), np.int64)
                labels[mask] = best if label_of is None else label_of[best]
                entropies[mask] = to_numpy(backend.ops.softmax_entropy(rows / self.tau))
        touched = write_to_memory(state.memory, state.filled, state.entropy, labels, entropies, features[chosen])
        state.cached += len(chosen)
        if len(touched):
            state.proxies[touched] = task_proxies(state.memory[touched], state.filled[touched])
            if state.scoring_proxies is not None:
                self._copy_scoring_proxies(touched)
            if state.gram is not None:
                block = state.memory[touched]
                state.gram[touched] = np.einsum("nsd,ntd->nst", block, block)

    def _copy_scoring_proxies(self, labels: np.ndarray) -> None:
        """Copy the proxies of ``labels`` into the scoring-order copy (labels not scored skipped)."""
        position = self._scoring_position[labels]
        scored = position >= 0
        state = self.state_
        state.scoring_proxies[self.backend.index(position[scored])] = self.backend.asarray(
            state.proxies[labels[scored]]
        )

    def _proxy_cosines(self, features: Any, host_features: np.ndarray | None) -> Any:
        """Cosines to the proxies of the scored labels in scoring order: task-adaptive on the
        backend (one GEMM), sample-adaptive on the host (its per-slot products read the NumPy
        memories)."""
        state = self.state_
        if self.proxy == "task":
            return features @ state.scoring_proxies.T
        assert state.gram is not None
        assert host_features is not None  # _score_batch passes them for the sample proxies
        labels = self._scored_labels
        parts = [
            sample_adaptive_cosines(
                host_features, state.memory, state.filled, state.gram, self.sample_weight_scale, part
            )
            for part in (labels[i : i + self.chunk_size] for i in range(0, len(labels), self.chunk_size))
        ]
        return self.backend.asarray(np.concatenate(parts, axis=1))

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Restore the initial memories (text features only) exactly.

        The initial state is rebuilt from the text features (:meth:`_build_initial_state` only
        allocates and copies them), not copied from a kept snapshot, so the detector holds one
        state, not two; the old state is released first, so a reset never holds two either.
        """
        del self.state_
        self.state_ = self._build_initial_state()

    def neglabel_score(self, image_features: Any) -> np.ndarray:
        """``S_nl`` with ``G = groups`` (the caching criterion and the ``nl_weight`` term)."""
        features = self.backend.unit_rows(image_features, "image features", self.id_text_features.shape[1])
        return to_numpy(self._neglabel_from_cosines(*self._text_cosines(features)))

    def _text_cosines(self, features: Any) -> tuple[Any, Any]:
        """``(B, K)`` cosines to the ID texts and ``(B, M)`` to the negatives in scoring order
        (column views of one product)."""
        product = features @ self._text.T
        return product[:, : self.n_classes], product[:, self.n_classes :]

    def _neglabel_from_cosines(self, id_cos: Any, neg_cos: Any) -> Any:
        grouped = neg_cos[:, : len(self.group_index_)]
        return self.backend.ops.grouped_id_mass(id_cos, grouped, self.groups, self.tau)

    def score_features(self, image_features: Any, images: Sequence[Any] | None = None) -> np.ndarray:
        """Cache the batch's confident samples, then score it against the updated proxies."""
        return self._score_batch(image_features)[0]

    def score_with_nearest(self, image_features: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The scores (caching as :meth:`score_features`), each image's nearest ID class and
        nearest negative label, from the text products the score made."""
        scores, id_cos, neg_cos = self._score_batch(image_features)
        nearest_id = row_argmax(id_cos)[1]
        if self.neg_labels is None:
            return scores, nearest_id, [""] * len(nearest_id)
        labelled = LabelledColumns(neg_cos, self.neg_labels, self._neg_order)
        return scores, nearest_id, nearest_texts([labelled], len(nearest_id))

    def _score_batch(self, image_features: Any) -> tuple[np.ndarray, Any, Any]:
        """The batch's scores and its cosines to the ID texts and to the negatives in scoring order
        (backend arrays)."""
        features = self.backend.unit_rows(image_features, "image features", self.id_text_features.shape[1])
        host_features = to_numpy(features, np.float32) if self.proxy == "sample" or not self.frozen else None
        id_cos, neg_cos = self._text_cosines(features)
        s_nl = to_numpy(self._neglabel_from_cosines(id_cos, neg_cos))
        if not self.frozen and host_features is not None:  # frozen: the saved proxies, a pure function of each image
            self._cache(host_features, id_cos, neg_cos, s_nl)
        proxy_cos = self._proxy_cosines(features, host_features)
        id_proxy_cos, neg_proxy_cos = proxy_cos[:, : self.n_classes], proxy_cos[:, self.n_classes :]
        self.state_.batches += 1
        proxy_score = self.backend.ops.grouped_id_mass(id_proxy_cos, neg_proxy_cos, self.groups, self.tau)
        return to_numpy(proxy_score) + self.nl_weight * s_nl, id_cos, neg_cos

    _STATE_ARRAYS = ("memory", "filled", "entropy", "proxies", "gram")

    def to_saved(self) -> SavedDetector:
        """The text features and the memories as they are now."""
        state = self.state_
        params = constructor_params(self.get_params())
        params["chunk_size"] = self.chunk_size
        arrays = {"id_text_features": self.id_text_features, "neg_text_features": self.neg_text_features}
        arrays.update({name: getattr(state, name) for name in self._STATE_ARRAYS if getattr(state, name) is not None})
        extra = {
            "neg_labels": self.neg_labels,
            "batches": state.batches,
            "cached": state.cached,
            "class_names": self.class_names,
        }
        return SavedDetector("adaneg", params, arrays, extra, frozen=self.frozen)

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> AdaNeg:
        """The detector :meth:`save` wrote, with its memories, frozen (see :func:`negspace.load_detector`)."""
        a = saved.arrays
        det = cls(
            a["id_text_features"],
            a["neg_text_features"],
            neg_labels=saved.extra.get("neg_labels"),
            backend=backend,
            device=device,
            **saved.params,
        )
        state = det.state_
        for name in cls._STATE_ARRAYS:
            if name in a:
                getattr(state, name)[...] = a[name]
        if state.scoring_proxies is not None:
            det._copy_scoring_proxies(np.arange(len(state.proxies)))
        state.batches, state.cached = int(saved.extra["batches"]), int(saved.extra["cached"])
        det.class_names = saved.extra.get("class_names")
        det.freeze()
        return det

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        return (self.neg_text_features, self.neg_labels) if self.neg_labels is not None else None

    def get_params(self) -> dict[str, Any]:
        return {
            "n_classes": self.n_classes,
            "n_negatives": len(self.neg_text_features),
            **asdict(self.config),
            **self.backend.params(),
        }
