"""TANL: test-time activated negative labels.

Paper: "Activation Matters: Test-time Activated Negative Labels for OOD Detection with
Vision-Language Models" (TANL; official code github.com/YBZh/OpenOOD-VLM). Formulas, defaults
and departures: docs/methods/tanl.md.

The label pool ``P`` is the whole corpus (~70k WordNet words, not only NegLabel's 10k). The
*activation* of pool label ``j`` on an image ``v`` is its softmax probability over ``ID ∪ P``::

    p_j(v) = exp(cos(v, t_j)/τ) / (Σ_{i∈ID} exp(cos(v, t_i)/τ) + Σ_{k∈P} exp(cos(v, t_k)/τ))

Two FIFO queues (length ``queue_length = 300``) hold activation rows ``p(v)`` of confident-ID and
confident-OOD samples; the ID queue starts from the ID text features used as pseudo images
(seeded shuffle, last 300 kept), the OOD queue from 15 noise images (:mod:`.noise`). Per batch::

    A_j = α·(mean_OODqueue p_j − mean_IDqueue p_j) + (1 − α)·(mean_confOOD(batch) p_j − mean_confID(batch) p_j)

(``α = 1`` distribution-adaptive, ``α = 0`` batch-adaptive, the default; an empty confident set
of the batch falls back to its queue mean, as in the official code). The top ``β = 1000`` labels
by ``A``, in decreasing activation, give the **activation-aware score** with step ``s``::

    S_aa(v) = (1/n) Σ_{k=1..n} S(v; top-m_k),   m_k = min(k·s, β),  n = ⌈β/s⌉

where ``S(v; T)`` is the section-1 ID mass over ``ID ∪ T``. It is computed for all ``m`` at once
from cumulative sums over the ranked labels (:func:`negspace.scoring.prefix_log_sum_exp`), so one batch
costs one ``B × β`` pass, never ``β`` softmaxes.

Confident samples are chosen with the *queue-only* score (labels ranked by the queue activation
alone). Those scores enter a fixed window of the last ``otsu_window = 20000`` scores (seeded with
the scores of the ID text features and the noise features); Otsu's threshold ``t`` over the
window (scan 0.00..0.99, ties take the middle candidate) splits them: confident ID
``S > t + g(1 − t)``, confident OOD ``S < t − g·t`` (``g = 0.5``). The confident samples' rows
enter the queues after the batch is scored. Queues and window are fixed-size ring buffers, so
memory does not grow with the stream.

Cost: the ``P``-wide softmax is computed only for the confident samples (the score needs just the
``β`` top labels, found with ``argpartition``), and the queue means come from running column sums
kept by the rings, so a batch costs about one GEMM against ``ID ∪ P`` at most
(``benchmarks/scoring_throughput.py``). ``backend="torch"`` runs it on a torch device.

``beta`` larger than the pool is clipped to the pool size with a logged warning.
"""

from __future__ import annotations

import logging
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
from negspace.detectors.ring import RingBuffer, column_sum
from negspace.detectors.saved import SavedDetector, constructor_params
from negspace.reprs import with_config_repr
from negspace.scoring import (  # noqa: F401  (activation_aware_score, otsu_threshold, top_labels: TANL's public API)
    DEFAULT_TAU,
    activation_aware_score,
    as_unit_rows,
    otsu_threshold,
    top_labels,
)
from negspace.templates import ID_TEMPLATE

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger(__name__)

CORPUS_CHOICES = ("neglabel", "all")
DEFAULT_CORPUS = "neglabel"  # the NegLabel corpus, docs/methods/neglabel.md


# --------------------------------------------------------------------------- pure functions


# --------------------------------------------------------------------------- config


@with_config_repr
@dataclass(frozen=True)
class TANLConfig:
    """TANL's hyper-parameters, with the authors' defaults (docs/methods/tanl.md)."""

    tau: float = DEFAULT_TAU
    queue_length: int = 300  # confident ID / OOD rows kept in each queue
    alpha: float = 0.0  # weight of the history activation against the batch's (1: distribution-adaptive)
    beta: int = 1000  # activated labels kept
    step: int = 1  # activation-aware score: prefix lengths s, 2s, ...
    g: float = 0.5  # confidence margin around the Otsu threshold
    otsu_window: int = 20000  # past scores the Otsu threshold is computed on
    otsu_step: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.g <= 1.0:
            raise ValueError(f"g must be in [0, 1], got {self.g}")
        if self.beta < 1 or self.step < 1 or self.queue_length < 1 or self.otsu_window < 1:
            raise ValueError("beta, step, queue_length and otsu_window must be >= 1")
        if not 0.0 < self.otsu_step < 1.0:
            raise ValueError(f"otsu_step must be in (0, 1), got {self.otsu_step}")


# --------------------------------------------------------------------------- state


@dataclass
class TANLState:
    """Everything TANL learns from the stream; fixed size whatever the stream length."""

    id_queue: RingBuffer
    ood_queue: RingBuffer
    window: RingBuffer
    threshold: float = float("nan")
    batches: int = 0


# --------------------------------------------------------------------------- detector


class TANL(OnlineDetector):
    """Test-time activated negative labels over the whole corpus (see the module docstring).

    Takes ``config=TANLConfig(...)`` or its fields as keywords (``beta=200``).

    Attributes:
        state_: the current :class:`TANLState`; ``reset()`` rebuilds the initial one exactly.
        pool_labels: the pool's words in feature order, when known.
    """

    def __init__(
        self,
        id_text_features: np.ndarray,
        pool_text_features: np.ndarray,
        noise_image_features: np.ndarray,
        config: TANLConfig | None = None,
        *,
        chunk_size: int = 256,
        pool_labels: Sequence[str] | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        self.config = resolve_config(TANLConfig, config, params)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        beta = self.config.beta
        self.backend = resolve_backend(backend, device)
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        dim = self.id_text_features.shape[1]
        self.pool_text_features = as_unit_rows(pool_text_features, "pool text features", dim)
        self.noise_image_features = as_unit_rows(noise_image_features, "noise image features", dim)
        # the backend's copies (the same arrays on NumPy; tensors on the device for torch)
        self._id_text = self.backend.asarray(self.id_text_features)
        self._pool_text = self.backend.asarray(self.pool_text_features)
        self._noise = self.backend.asarray(self.noise_image_features)
        n_pool = len(self.pool_text_features)
        if pool_labels is not None and len(pool_labels) != n_pool:
            raise ValueError(f"{len(pool_labels)} pool labels for {n_pool} pool features")
        if beta > n_pool:
            log.warning("beta = %d is larger than the pool of %d labels; using all %d", beta, n_pool, n_pool)
        c = self.config
        self.tau, self.queue_length, self.alpha, self.step, self.g = c.tau, c.queue_length, c.alpha, c.step, c.g
        self.otsu_window, self.otsu_step, self.seed = c.otsu_window, c.otsu_step, c.seed
        self.beta_requested = beta
        self.beta = min(beta, n_pool)
        # Rows of activations computed at once (a 256 x 70k chunk is 72 MB). Each chunk reads the
        # whole pool once: 64-row chunks made the pool product 1.7x slower than one 256-row GEMM.
        self.chunk_size = int(chunk_size)
        self.pool_labels = list(pool_labels) if pool_labels is not None else None
        # No copy of the initial state is kept (it is as large as the state): reset() rebuilds it.
        self.state_ = self._build_initial_state()

    # ------------------------------------------------------------------ builders

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        pool_text_features: np.ndarray,
        noise_image_features: np.ndarray,
        config: TANLConfig | None = None,
        *,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> TANL:
        """Build from ``(K, D)`` ID text, ``(P, D)`` pool text and ``(N, D)`` noise image features.

        ``backend="torch"`` keeps the pool, the queues and the batch on ``device`` (CUDA when
        present for ``"auto"``); the Otsu window and the scores returned are NumPy.
        """
        return cls(
            id_text_features, pool_text_features, noise_image_features, config, backend=backend, device=device, **params
        )

    @classmethod
    def from_encoder(
        cls,
        encoder: ClipEncoder,
        class_names: Sequence[str],
        corpus: str = DEFAULT_CORPUS,
        noise_seed: int = 0,
        progress: bool = True,
        **params: Any,
    ) -> TANL:
        """Encode the ID names, the whole WordNet corpus and the 15 noise images, then build.

        ``corpus="neglabel"`` (default) is the ~71k-word NegLabel corpus (docs/methods/neglabel.md;
        the "~70k candidates" of docs/methods/tanl.md); ``"all"`` is all of WordNet; a file path is a
        vocabulary of one's own (:mod:`negspace.corpus.custom`). Exact ID names are
        removed. ID names and nouns use ``The nice {}.``, adjectives ``This is a {} photo.``.
        ``params`` are the keyword arguments of :meth:`from_features` (``config=``, its fields,
        ``backend``, ``device``).
        """
        from negspace.corpus.custom import is_corpus_spec, load_corpus
        from negspace.corpus.mining import ADJECTIVE_TEMPLATE, NOUN_TEMPLATE
        from negspace.detectors.noise import make_noise_images

        if not is_corpus_spec(corpus):
            raise ValueError(f"corpus must be one of {CORPUS_CHOICES} or a corpus file, got {corpus!r}")
        words = load_corpus(corpus, exclude=class_names)
        id_features = encoder.encode_texts(list(class_names), template=ID_TEMPLATE, progress=progress)
        pool = np.concatenate(
            [
                encoder.encode_texts(list(words.nouns), template=NOUN_TEMPLATE, progress=progress),
                encoder.encode_texts(list(words.adjectives), template=ADJECTIVE_TEMPLATE, progress=progress),
            ]
        )
        noise = encoder.encode_images(make_noise_images(seed=noise_seed))
        detector = cls(id_features, pool, noise, pool_labels=list(words.nouns) + list(words.adjectives), **params)
        detector.encoder = encoder
        detector.class_names = list(class_names)
        return detector

    # ------------------------------------------------------------------ internals

    def _rows(self, features: Any) -> Any:
        return self.backend.ops.activation_rows(features, self._id_text, self._pool_text, self.tau)

    def _score_with(self, features: Any, id_cos: Any, activation: Any) -> Any:
        """``S_aa`` of a batch with the labels ranked by ``activation`` (backend arrays)."""
        return self._score_and_ranked(features, id_cos, activation)[0]

    def _score_and_ranked(self, features: Any, id_cos: Any, activation: Any) -> tuple[Any, Any, Any]:
        """``S_aa``, the batch's cosines to the ``beta`` labels ranked by ``activation`` and
        those labels' pool indices (backend arrays)."""
        ops = self.backend.ops
        top = ops.top_labels(activation, self.beta)
        ranked = features @ self._pool_text[top].T
        return ops.activation_aware_score(id_cos, ranked, self.tau, self.step), ranked, top

    def _build_initial_state(self) -> TANLState:
        rng = np.random.default_rng(self.seed)
        n_pool = len(self.pool_text_features)
        # queue means are read every batch: the rings keep running column sums
        id_queue = RingBuffer(self.queue_length, n_pool, np.float32, track_sum=True, backend=self.backend)
        ood_queue = RingBuffer(self.queue_length, n_pool, np.float32, track_sum=True, backend=self.backend)
        # Only the last queue_length rows of the shuffled pseudo images survive the initial push.
        index = self.backend.index
        id_order = rng.permutation(len(self.id_text_features))[-self.queue_length :]
        noise_order = rng.permutation(len(self.noise_image_features))[-self.queue_length :]
        for start in range(0, len(id_order), self.chunk_size):
            id_queue.push(self._rows(self._id_text[index(id_order[start : start + self.chunk_size])]))
        ood_queue.push(self._rows(self._noise[index(noise_order)]))
        activation = ood_queue.mean() - id_queue.mean()
        window = RingBuffer(self.otsu_window, None, np.float64)
        for probes in (self._id_text, self._noise):
            for start in range(0, len(probes), self.chunk_size):
                chunk = probes[start : start + self.chunk_size]
                window.push(to_numpy(self._score_with(chunk, chunk @ self._id_text.T, activation)))
        return TANLState(id_queue, ood_queue, window)

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Restore the initial queues and Otsu window exactly.

        The initial state is rebuilt from the constructor inputs (:meth:`_build_initial_state` is
        deterministic), not copied from a kept snapshot, so the detector holds one state, not two.
        Rebuilding costs one pass of the ID-text and noise pseudo images over the pool (about half
        a second for a 70k pool, D 512, on 2 cores); the old state is released first, so a reset
        never holds two.
        """
        del self.state_
        self.state_ = self._build_initial_state()

    def score_features(self, image_features: np.ndarray, images: Sequence[Any] | None = None) -> np.ndarray:
        """Score a batch with the current state, then push its confident rows into the queues."""
        return self._score_batch(image_features)[0]

    def score_with_nearest(self, image_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The scores (learning as :meth:`score_features`), each image's nearest ID class and its
        nearest label among the ``beta`` activated ones the score used, from the score's products."""
        scores, id_cos, ranked, top = self._score_batch(image_features)
        nearest_id = row_argmax(id_cos)[1]
        if self.pool_labels is None:
            return scores, nearest_id, [""] * len(nearest_id)
        labelled = LabelledColumns(ranked, self.pool_labels, to_numpy(top, np.int64))
        return scores, nearest_id, nearest_texts([labelled], len(nearest_id))

    def _score_batch(self, image_features: np.ndarray) -> tuple[np.ndarray, Any, Any, Any]:
        """The batch's scores, its ID cosines, and the cosines to the activated labels the final
        score used with those labels' pool indices; updates the state unless frozen."""
        features = self.backend.unit_rows(image_features, "image features", self.id_text_features.shape[1])
        state = self.state_
        id_cos = features @ self._id_text.T
        queue_pos, queue_neg = state.id_queue.mean(), state.ood_queue.mean()
        queue_activation = queue_neg - queue_pos
        queue_score, ranked, top = self._score_and_ranked(features, id_cos, queue_activation)
        queue_score = to_numpy(queue_score)
        if self.frozen:  # the labels the saved queues activate: a pure function of each image
            return queue_score, id_cos, ranked, top

        state.window.push(queue_score)
        t = otsu_threshold(state.window.rows(), self.otsu_step)
        state.threshold = t
        confident_id = queue_score > t + self.g * (1.0 - t)
        confident_ood = queue_score < t - self.g * t

        # The confident rows enter the queues as they are computed (the queue means this batch
        # uses were read above). Confident ID rows come first, so each chunk's ID and OOD rows are
        # two contiguous slices, and each queue receives its rows in batch order, as one push would.
        sum_pos = self.backend.zeros(len(self.pool_text_features))
        sum_neg = self.backend.zeros(len(self.pool_text_features))
        id_index = np.flatnonzero(confident_id)
        confident = np.concatenate([id_index, np.flatnonzero(confident_ood)])
        for start in range(0, len(confident), self.chunk_size):
            rows = self._rows(features[self.backend.index(confident[start : start + self.chunk_size])])
            split = min(max(len(id_index) - start, 0), len(rows))
            for queue, total, picked in (
                (state.id_queue, sum_pos, rows[:split]),
                (state.ood_queue, sum_neg, rows[split:]),
            ):
                if len(picked):
                    picked_sum = column_sum(picked)
                    total[:] += picked_sum  # in place: total is sum_pos or sum_neg
                    queue.push(picked, picked_sum)
        n_pos, n_neg = int(confident_id.sum()), int(confident_ood.sum())
        batch_pos = sum_pos / n_pos if n_pos else queue_pos
        batch_neg = sum_neg / n_neg if n_neg else queue_neg

        state.batches += 1
        if self.alpha == 1.0 or (n_pos == 0 and n_neg == 0):
            return queue_score, id_cos, ranked, top  # A is the queue activation itself
        activation = self.alpha * queue_activation + (1.0 - self.alpha) * (batch_neg - batch_pos)
        scores, ranked, top = self._score_and_ranked(features, id_cos, activation)
        return to_numpy(scores), id_cos, ranked, top

    _RINGS = ("id_queue", "ood_queue", "window")

    def to_saved(self) -> SavedDetector:
        """The text features, the noise features and the state as it is now (queues, window)."""
        state = self.state_
        params = constructor_params(self.get_params())
        params["beta"], params["chunk_size"] = self.beta_requested, self.chunk_size
        arrays = {
            "id_text_features": self.id_text_features,
            "pool_text_features": self.pool_text_features,
            "noise_image_features": self.noise_image_features,
        }
        arrays.update(
            {
                name: to_numpy(getattr(state, name).data, np.float64 if name == "window" else np.float32)
                for name in self._RINGS
            }
        )
        rings = {name: [getattr(state, name).count, getattr(state, name).head] for name in self._RINGS}
        threshold = None if state.threshold != state.threshold else state.threshold  # NaN is not JSON
        extra = {
            "pool_labels": self.pool_labels,
            "rings": rings,
            "threshold": threshold,
            "batches": state.batches,
            "class_names": self.class_names,
        }
        return SavedDetector("tanl", params, arrays, extra, frozen=self.frozen)

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> TANL:
        """The detector :meth:`save` wrote, with its state, frozen (see :func:`negspace.load_detector`)."""
        a = saved.arrays
        det = cls(
            a["id_text_features"],
            a["pool_text_features"],
            a["noise_image_features"],
            pool_labels=saved.extra.get("pool_labels"),
            backend=backend,
            device=device,
            **saved.params,
        )
        for name in cls._RINGS:
            count, head = saved.extra["rings"][name]
            getattr(det.state_, name).load(a[name], count, head)
        threshold = saved.extra["threshold"]
        det.state_.threshold = float("nan") if threshold is None else float(threshold)
        det.state_.batches = int(saved.extra["batches"])
        det.class_names = saved.extra.get("class_names")
        det.freeze()
        return det

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        """The ``beta`` labels the queues activate now: those the score reads an image against."""
        if self.pool_labels is None:
            return None
        state = self.state_
        top = to_numpy(self.backend.ops.top_labels(state.ood_queue.mean() - state.id_queue.mean(), self.beta), np.int64)
        return self.pool_text_features[top], [self.pool_labels[i] for i in top]

    def get_params(self) -> dict[str, Any]:
        return {
            "n_classes": len(self.id_text_features),
            "n_pool": len(self.pool_text_features),
            "n_noise": len(self.noise_image_features),
            **asdict(self.config),
            "beta": self.beta,  # as used: at most the pool's size (to_saved keeps the requested one)
            **self.backend.params(),
        }
