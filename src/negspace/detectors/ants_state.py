"""ANTS configuration, bounded state and the small pure rules it uses (SPEC section 4).

Kept apart from :mod:`negspace.detectors.ants` so the detector file stays readable:

- :class:`ANTSConfig`: every constant of SPEC section 4 as a field with its default.
- :class:`ANTSState`: everything ANTS learns from a stream. Its size never grows with the stream:
  the ENS bank holds at most ``ens_size`` rows (newest kept), the VSNL answers at most one entry
  per ID class, the score history is a fixed-bin histogram, prediction counts are ``K``-vectors,
  the means are running sums, and the pool of negatives waiting for the MLLM is flushed whenever
  it reaches ``min_candidates`` (so it never exceeds ``min_candidates + batch size``).
- :func:`paper_threshold`, :func:`histogram_threshold`: the two negative-image mining rules.
- :func:`similar_classes`: the visually similar ID classes ``Y'`` (Eq. 10-11, or the authors'
  top-40 over all predictions).
- :func:`kcenter_greedy`: diversity selection of the negatives sent to the MLLM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

MODES = ("ada", "ens", "vsnl", "neglabel")
THRESHOLDS = ("paper", "histogram")
SIMILAR_CLASS_RULES = ("frequency", "history_top40")
DIVERSITY = (None, "kcenter")


@dataclass(frozen=True)
class ANTSConfig:
    """Hyper-parameters of ANTS; defaults from SPEC section 4 (ImageNet-scale streams)."""

    tau: float = 0.01
    groups: int = 100  # NegLabel grouping of the corpus bank (fixed count)
    seed: int = 0
    gamma0: float = 0.9  # Eq. 5 candidate threshold
    eta: float = 0.5  # Eq. 6 selection ratio
    threshold: str = "paper"  # or "histogram" (the authors' code)
    histogram_start: float = 0.8  # histogram rule: initial threshold
    histogram_coarse_width: float = 0.1  # histogram rule: bin width of the jump search
    histogram_bins: int = 1000  # fine bins of the score histogram over [0, 1]
    ens_size: int = 10_000  # M: ENS bank capacity, newest kept
    group_size: int = 100  # fixed group size for the changing banks (ENS, VSNL)
    delta: float = 0.08  # Eq. 10 ratio of ID classes in Y'
    similar_classes: str = "frequency"  # or "history_top40" (the authors' code)
    history_top: int = 40  # classes kept by the history rule
    vsnl_per_class: int = 5
    min_candidates: int = 200  # ENS update when this many new negatives wait
    vsnl_every: int = 40  # VSNL update period in batches ...
    vsnl_start: int = 10  # ... starting at this batch (1-based)
    mode: str = "ada"
    lam: float | None = None  # fixed lam (ablations, paper Table 3); None = adaptive
    two_pass: bool = False
    max_mllm_calls: int = 2000  # generate requests per run (per reset)
    mllm_batch_size: int = 64  # requests per generate call
    mllm_lag: int = 1  # online: answers change the banks before batch t + lag; 0 = block until answered
    diversity: str | None = None  # "kcenter": describe a spread subset of each pool
    diversity_size: int = 50  # negatives described per ENS update with diversity
    description_words: int = 8
    max_tokens: int = 64

    def __post_init__(self) -> None:
        if self.mllm_lag < 0:
            raise ValueError(f"mllm_lag must be >= 0, got {self.mllm_lag}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        if self.similar_classes not in SIMILAR_CLASS_RULES:
            raise ValueError(f"similar_classes must be one of {SIMILAR_CLASS_RULES}, got {self.similar_classes!r}")
        if self.diversity not in DIVERSITY:
            raise ValueError(f"diversity must be one of {DIVERSITY}, got {self.diversity!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {self.eta}")
        if not 0 < self.delta <= 1:
            raise ValueError(f"delta must be in (0, 1], got {self.delta}")
        if not 0 < self.gamma0 <= 1:
            raise ValueError(f"gamma0 must be in (0, 1], got {self.gamma0}")
        if self.lam is not None and not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be in [0, 1] or None, got {self.lam}")
        for name in ("ens_size", "group_size", "min_candidates", "vsnl_every", "vsnl_start",
                     "mllm_batch_size", "diversity_size", "histogram_bins", "vsnl_per_class",
                     "history_top", "description_words", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_mllm_calls < 0:
            raise ValueError(f"max_mllm_calls must be >= 0, got {self.max_mllm_calls}")

    @property
    def uses_ens(self) -> bool:
        return self.mode in ("ada", "ens")

    @property
    def uses_vsnl(self) -> bool:
        return self.mode in ("ada", "vsnl")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ANTSConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ANTSState:
    """What ANTS has learned from the stream; bounded (see the module doc)."""

    dim: int
    n_classes: int
    histogram_bins: int
    threshold: float  # gamma*: paper rule nan until the first candidate; histogram rule 0.8
    # ENS bank: fixed-capacity rows, the first ens_count used, oldest first.
    ens_capacity: int
    ens_texts: list[str] = field(default_factory=list)
    ens_features: np.ndarray | None = None  # (ens_capacity, D) once the first sentence arrives
    # VSNL: parsed answers per ID class (a cache, at most K entries), the active classes Y'.
    vsnl_answers: dict[int, list[str]] = field(default_factory=dict)
    vsnl_answer_features: dict[int, np.ndarray] = field(default_factory=dict)
    vsnl_classes: list[int] = field(default_factory=list)
    vsnl_texts: list[str] = field(default_factory=list)
    vsnl_features: np.ndarray | None = None
    # histories as fixed-size counts
    score_hist: np.ndarray = None  # type: ignore[assignment]
    neg_pred_counts: np.ndarray = None  # type: ignore[assignment]
    all_pred_counts: np.ndarray = None  # type: ignore[assignment]
    # running means for lam
    sum_ens: float = 0.0
    sum_vsnl: float = 0.0
    n_negatives: int = 0
    # negatives waiting for a description (flushed at min_candidates)
    pending_features: list[np.ndarray] = field(default_factory=list)
    pending_images: list[Any] = field(default_factory=list)
    pending_preds: list[np.ndarray] = field(default_factory=list)
    pending_scores: list[np.ndarray] = field(default_factory=list)
    # counters
    batches_seen: int = 0
    images_seen: int = 0
    ens_updates: int = 0
    vsnl_updates: int = 0
    mllm_requests: int = 0
    failed_answers: int = 0
    rejected_answers: int = 0
    budget_exhausted: bool = False
    version: int = 0  # bumped on every bank change (invalidates grouped-bank caches)

    def __post_init__(self) -> None:
        if self.score_hist is None:
            self.score_hist = np.zeros(self.histogram_bins, dtype=np.int64)
        if self.neg_pred_counts is None:
            self.neg_pred_counts = np.zeros(self.n_classes, dtype=np.int64)
        if self.all_pred_counts is None:
            self.all_pred_counts = np.zeros(self.n_classes, dtype=np.int64)

    @property
    def ens_count(self) -> int:
        return len(self.ens_texts)

    @property
    def ens_bank(self) -> np.ndarray:
        """``(n, D)`` ENS features in use, oldest first."""
        if self.ens_features is None:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.ens_features[: self.ens_count]

    @property
    def vsnl_bank(self) -> np.ndarray:
        if self.vsnl_features is None:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.vsnl_features

    @property
    def pending_count(self) -> int:
        return int(sum(len(p) for p in self.pending_preds))

    def clear_pending(self) -> None:
        self.pending_features.clear()
        self.pending_images.clear()
        self.pending_preds.clear()
        self.pending_scores.clear()

    def add_ens(self, texts: list[str], features: np.ndarray) -> None:
        """Append sentences; when over capacity the *oldest* are dropped (newest kept)."""
        if not texts:
            return
        features = np.asarray(features, dtype=np.float32)
        if len(texts) >= self.ens_capacity:  # only the newest capacity rows survive
            texts, features = texts[-self.ens_capacity :], features[-self.ens_capacity :]
        if self.ens_features is None:
            self.ens_features = np.zeros((self.ens_capacity, self.dim), dtype=np.float32)
        n, k = self.ens_count, len(texts)
        overflow = max(0, n + k - self.ens_capacity)
        if overflow:
            keep = n - overflow
            self.ens_features[:keep] = self.ens_features[overflow:n].copy()
            self.ens_texts = self.ens_texts[overflow:]
            n = keep
        self.ens_features[n : n + k] = features
        self.ens_texts = self.ens_texts + list(texts)
        self.version += 1

    def lam(self, fixed: float | None = None) -> float:
        """``lam = (1 - a) / ((1 - a) + (1 - b))``; 0.5 with no negatives or a zero denominator."""
        if fixed is not None:
            return float(fixed)
        if self.n_negatives == 0:
            return 0.5
        a = self.sum_ens / self.n_negatives
        b = self.sum_vsnl / self.n_negatives
        num, den = 1.0 - a, (1.0 - a) + (1.0 - b)
        if not den > 1e-12:
            return 0.5
        return float(min(1.0, max(0.0, num / den)))


# -- score histogram and thresholds ---------------------------------------------------------------


def histogram_add(hist: np.ndarray, scores: np.ndarray) -> None:
    """Add scores in ``[0, 1]`` to a fixed-bin histogram in place (order independent)."""
    bins = len(hist)
    index = np.clip((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    hist += np.bincount(index, minlength=bins)


def histogram_quantile(hist: np.ndarray, q: float, upper: float = 1.0) -> float | None:
    """The ``q`` quantile of the scores in ``hist`` below ``upper``, interpolated within a bin.

    Returns ``None`` when no score lies below ``upper``.
    """
    bins = len(hist)
    last = int(math.ceil(upper * bins - 1e-9))  # bins [0, last) lie below upper
    counts = hist[: max(0, min(last, bins))].astype(np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    target = q * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, target - 1e-9))
    index = min(index, len(counts) - 1)
    before = cumulative[index - 1] if index > 0 else 0.0
    inside = (target - before) / counts[index] if counts[index] > 0 else 1.0
    value = (index + min(1.0, max(0.0, inside))) / bins
    return float(min(value, upper))


def paper_threshold(hist: np.ndarray, gamma0: float, eta: float) -> float | None:
    """Eq. 5-6 on the score history: candidates ``S < gamma0``; ``gamma*`` is the score below which
    the fraction ``eta`` of them lies (the max ``S`` over the negatives)."""
    return histogram_quantile(hist, eta, upper=gamma0)


def histogram_threshold(hist: np.ndarray, eta: float, coarse_width: float = 0.1) -> float | None:
    """The authors' rule: bins of ``coarse_width``; the upper edge of the bin after the largest jump
    in counts bounds the scores; ``gamma*`` is their ``eta`` percentile."""
    bins = len(hist)
    per = max(1, int(round(coarse_width * bins)))
    n_coarse = int(math.ceil(bins / per))
    coarse = np.add.reduceat(hist, np.arange(0, bins, per))[:n_coarse]
    if coarse.sum() == 0 or len(coarse) < 2:
        return None
    jump = int(np.argmax(np.abs(np.diff(coarse))))
    upper = min(1.0, (jump + 1) * per / bins)
    return histogram_quantile(hist, eta, upper=upper)


def exact_paper_negatives(scores: np.ndarray, gamma0: float, eta: float) -> tuple[np.ndarray, float | None]:
    """Eq. 5-6 on a whole set at once (two-pass): the mask of negatives and ``gamma*``.

    The ``ceil(eta * n)`` lowest candidates; ties at ``gamma*`` are all kept, so the result
    depends only on the multiset of scores (permutation invariant).
    """
    candidates = scores < gamma0
    n = int(candidates.sum())
    if n == 0:
        return np.zeros(len(scores), dtype=bool), None
    k = max(1, int(math.ceil(eta * n)))
    gamma = float(np.partition(scores[candidates], k - 1)[k - 1])
    return candidates & (scores <= gamma), gamma


# -- visually similar ID classes --------------------------------------------------------------------


def top_counts(counts: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest positive counts; ties by class index (deterministic)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    return [int(i) for i in order[:k] if counts[i] > 0]


def similar_classes(state: ANTSState, config: ANTSConfig) -> list[int]:
    """``Y'``: top ``delta*K`` classes by prediction frequency among negatives (Eq. 10-11), or the
    authors' ``history_top`` most predicted classes over all past images."""
    if config.similar_classes == "history_top40":
        return top_counts(state.all_pred_counts, config.history_top)
    k = max(1, int(round(config.delta * state.n_classes)))
    return top_counts(state.neg_pred_counts, k)


# -- diversity selection ------------------------------------------------------------------------------


def kcenter_greedy(features: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """Greedy k-center on unit rows (cosine distance): a spread subset of ``k`` indices.

    Starts at ``first``; each step adds the row farthest from the chosen ones (ties: lowest
    index). Deterministic, ``O(n k D)``.
    """
    n = len(features)
    if k >= n:
        return np.arange(n)
    chosen = [int(first)]
    distance = 1.0 - features @ features[first]
    distance[first] = -np.inf
    for _ in range(k - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, 1.0 - features @ features[nxt])
        distance[chosen] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def scaled_schedule(n_images: int, batch_size: int = 256, reference_images: int = 60_000) -> dict[str, int]:
    """A schedule scaled from the ImageNet-scale defaults to a stream of ``n_images``.

    The defaults (200 negatives per ENS update, VSNL every 40 batches from batch 10) fit about
    60,000 images in batches of 256; this keeps the same number of updates per stream.
    """
    ref_batches = reference_images / 256
    n_batches = max(1, math.ceil(n_images / batch_size))
    image_factor = n_images / reference_images
    batch_factor = n_batches / ref_batches
    return {
        "min_candidates": max(10, int(round(200 * image_factor))),
        "vsnl_start": max(1, int(round(10 * batch_factor))),
        "vsnl_every": max(1, int(round(40 * batch_factor))),
    }
