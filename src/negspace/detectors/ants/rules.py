"""The pure rules of ANTS (docs/methods/ants.md): thresholds, ``Y'``, grouping of the changing banks,
the fusion weight, the activation-aware ENS score, diversity selection and the scaled schedule.

No state lives here: every function takes arrays and returns arrays or numbers.
"""

from __future__ import annotations

import math

import numpy as np

from negspace.scoring import activation_aware_score, group_order, grouped_id_mass, id_mass, otsu_threshold

# -- negative-image thresholds ------------------------------------------------------------------------


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
    last = math.ceil(upper * bins - 1e-9)  # bins [0, last) lie below upper
    counts = hist[: max(0, min(last, bins))].astype(np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    target = q * total
    cumulative = np.cumsum(counts)
    index = min(int(np.searchsorted(cumulative, target - 1e-9)), len(counts) - 1)
    before = cumulative[index - 1] if index > 0 else 0.0
    inside = (target - before) / counts[index] if counts[index] > 0 else 1.0
    value = (index + min(1.0, max(0.0, inside))) / bins
    return float(min(value, upper))


def paper_threshold(hist: np.ndarray, gamma0: float, eta: float) -> float | None:
    """Eq. 5-6 on the score history: candidates ``S < gamma0``; ``gamma*`` is the score below which
    the fraction ``eta`` of them lies (the max ``S`` over the negatives)."""
    return histogram_quantile(hist, eta, upper=gamma0)


def histogram_threshold(scores: np.ndarray, eta: float, coarse_width: float = 0.1) -> float | None:
    """The authors' threshold over all past base scores (docs/methods/ants.md, step 10).

    ``counts`` = ``np.histogram`` of the scores (float32, as the authors keep them) over the bin
    edges ``arange(0, 1 + width, width)``; the upper bound is the edge after the largest absolute
    jump in counts; ``gamma* = np.percentile(scores below the bound, 100 * eta)`` (linear
    interpolation), or of all scores when none lies below. ``None`` for no scores.
    """
    values = np.asarray(scores, dtype=np.float32)
    if values.size == 0:
        return None
    edges = np.arange(0.0, 1.0 + coarse_width, coarse_width)
    counts, _ = np.histogram(values, edges)
    upper = edges[int(np.argmax(np.abs(np.diff(counts)))) + 1]
    below = values[values < upper]
    return float(np.percentile(below if below.size else values, 100.0 * eta))


def exact_paper_negatives(scores: np.ndarray, gamma0: float, eta: float) -> tuple[np.ndarray, float | None]:
    """Eq. 5-6 on a whole set at once (two-pass): the mask of negatives and ``gamma*``.

    The ``ceil(eta * n)`` lowest candidates; ties at ``gamma*`` are all kept, so the result
    depends only on the multiset of scores (permutation invariant).
    """
    candidates = scores < gamma0
    n = int(candidates.sum())
    if n == 0:
        return np.zeros(len(scores), dtype=bool), None
    k = max(1, math.ceil(eta * n))
    gamma = float(np.partition(scores[candidates], k - 1)[k - 1])
    return candidates & (scores <= gamma), gamma


# -- visually similar ID classes ------------------------------------------------------------------------


def top_counts(counts: np.ndarray, k: int, first_seen: np.ndarray | None = None) -> list[int]:
    """Indices of the ``k`` largest positive counts, largest first.

    Ties go to the class seen first (``first_seen``: the stream position of each class's first
    occurrence, as ``collections.Counter.most_common`` orders them) or, without it, to the lower
    class index.
    """
    tie = np.arange(len(counts)) if first_seen is None else first_seen
    order = np.lexsort((tie, -counts))
    return [int(i) for i in order[:k] if counts[i] > 0]


def frequency_classes(neg_pred_counts: np.ndarray, delta: float) -> list[int]:
    """Eq. 10-11: the ``delta * K`` classes most often predicted for the negative images."""
    k = max(1, int(round(delta * len(neg_pred_counts))))  # noqa: RUF046 - under NumPy < 2, round() of a NumPy float is a NumPy float
    return top_counts(neg_pred_counts, k)


# -- the changing banks --------------------------------------------------------------------------------


def changing_bank_groups(n: int, group_size: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Column order and group count of a bank that changes at test time (docs/methods/core.md).

    A bank of ``n <= group_size`` rows is scored ungrouped (all rows, one group); otherwise
    ``G = max(1, n // group_size)`` groups of ``n // G`` rows: the last ``n mod G`` rows are
    dropped and the rest permuted by :func:`negspace.scoring.group_order` (seeded
    ``torch.randperm``). At most ``G - 1`` rows are left out.
    """
    if n <= group_size:
        return np.arange(n), 1
    groups = max(1, n // group_size)
    return group_order(n, groups, seed), groups


def changing_bank_score(
    id_cos: np.ndarray, bank_cos: np.ndarray, order: np.ndarray, groups: int, tau: float
) -> np.ndarray:
    """``S(v; bank)`` with the grouping of :func:`changing_bank_groups` (``bank_cos`` in bank order)."""
    if groups == 1:  # one group holds every row: its order does not matter
        return id_mass(id_cos, bank_cos, tau)
    return grouped_id_mass(id_cos, bank_cos[:, order], groups, tau)


# -- the fusion weight -------------------------------------------------------------------------------


def fusion_weight(a: float, b: float) -> float:
    """Eq. 15: ``lam = (1 - a) / ((1 - a) + (1 - b))``; 0.5 when the denominator is 0."""
    num, den = 1.0 - a, (1.0 - a) + (1.0 - b)
    if not den > 1e-12:
        return 0.5
    return float(min(1.0, max(0.0, num / den)))


def crossfit_lam(
    id_ens: np.ndarray, id_vsnl: np.ndarray, neg_ens: np.ndarray, neg_vsnl: np.ndarray, steps: int = 20
) -> float | None:
    """Experimental: the ``lam`` in ``{0, 1/steps, ..., 1}`` that best separates confident-ID
    samples from held-out negatives (largest AUROC of ``lam * S_ens + (1 - lam) * S_vsnl``).

    The negatives' ENS scores must come from a bank that holds none of their own descriptions
    (the caller cross-fits two halves). Ties go to the ``lam`` nearest 0.5. ``None`` when either
    side is empty.
    """
    from negspace.metrics import auroc

    if len(id_ens) == 0 or len(neg_ens) == 0:
        return None
    grid = np.linspace(0.0, 1.0, steps + 1)
    quality = [auroc(lam * id_ens + (1 - lam) * id_vsnl, lam * neg_ens + (1 - lam) * neg_vsnl) for lam in grid]
    best = max(quality)
    ties = grid[np.isclose(quality, best, rtol=0, atol=1e-12)]
    return float(ties[np.argmin(np.abs(ties - 0.5))])


# -- activation-aware ENS (docs/methods/ants.md, step 11) -----------------------------------------------


def activation_threshold(window: np.ndarray) -> float:
    """The two-cluster threshold of past ENS scores: first minimum wins, median if no split."""
    return otsu_threshold(window, 0.01, ties="first")


def activation_ens_score(
    id_cos: np.ndarray,
    ens_cos: np.ndarray,
    reference: np.ndarray,
    threshold: float,
    *,
    gap: float,
    negatives: int,
    step: int,
    tau: float,
) -> np.ndarray | None:
    """The authors' activation-aware ENS score of one batch, or ``None`` (then ``reference`` is used).

    ``reference`` = the batch's grouped ``S_ens``; high = ``reference > t + gap (1 - t)``, low =
    ``reference < t - gap t``. The relevance of sentence ``j`` is ``mean_low p_j - mean_high p_j``
    with ``p`` the softmax over ``ID ∪ ENS`` at ``tau``; the top ``min(negatives, |ENS|)`` by
    relevance (ties: lower index) feed TANL's cumulative score with ``step``.
    """
    high = reference > threshold + gap * (1.0 - threshold)
    low = reference < threshold - gap * threshold
    if not high.any() or not low.any():
        return None
    logits = np.concatenate([id_cos, ens_cos], axis=1).astype(np.float64) / tau
    from scipy.special import softmax  # on first use: keeps `import negspace` light

    probs = softmax(logits, axis=1)[:, id_cos.shape[1] :]
    relevance = probs[low].mean(axis=0) - probs[high].mean(axis=0)
    top = np.argsort(-relevance, kind="stable")[: min(negatives, ens_cos.shape[1])]
    return activation_aware_score(id_cos, ens_cos[:, top], tau, step)


# -- diversity selection and schedule -------------------------------------------------------------------


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
    # int(round(x)): under NumPy < 2, round() of a NumPy float (a NumPy n_images) is a NumPy float
    return {
        "min_candidates": max(10, int(round(200 * image_factor))),  # noqa: RUF046
        "vsnl_start": max(1, int(round(10 * batch_factor))),  # noqa: RUF046
        "vsnl_every": max(1, int(round(40 * batch_factor))),  # noqa: RUF046
    }
