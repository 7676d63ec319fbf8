"""The shared core of every negative-label method (docs/methods/core.md), as pure log-space functions.

For an image feature ``v``, ID text features ``t_i`` and negative text features ``t-_j`` (all
L2-normalised), the negative-label score is the softmax mass on the ID labels over ``ID ∪ T-``::

    S(v; T-) = Σ_i exp(cos(v, t_i)/τ) / (Σ_i exp(cos(v, t_i)/τ) + Σ_j exp(cos(v, t-_j)/τ))

which is exactly ``sigmoid(LSE_i(cos_i/τ) − LSE_j(cos-_j/τ))``. Computing it that way never
exponentiates ``cos/τ`` (``e^100`` at τ = 0.01 is near the float32 limit) and stays exact when one
side's mass underflows.

Grouping (Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language
Models", ICLR 2024): the bank is cut to a multiple of ``G``, permuted by a seeded
``torch.randperm`` on the CPU (reproducing the reference implementations' groups), split into
``G`` consecutive groups, and the ``G`` scores are averaged.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TAU = 0.01

# Rows whose norm is this close to 1 are used as they are: float32 unit rows from an encoder have
# norms within ~1e-7 of 1, and dividing them again would only cost a copy of the batch.
UNIT_NORM_TOLERANCE = 1e-6


def as_unit_rows(features: np.ndarray, name: str, dim: int | None = None, copy: bool = True) -> np.ndarray:
    """Validate a ``(N, D)`` feature matrix and return it L2-normalised as float32.

    Raw embeddings are divided by their norms. Features from
    :class:`~negspace.encoders.ClipEncoder` are already unit-norm: with ``copy=False`` (the
    scoring paths, which only read the batch) they come back as they are, without a copy;
    detectors keep their own copy of the text features (``copy=True``).
    """
    array = np.asarray(features, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} have dimension {array.shape[1]}, expected {dim}")
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))
    if not np.all(np.isfinite(norms)):  # NaN or infinity in a row, or squares beyond float32
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contain NaN or infinity")
        norms = np.linalg.norm(array.astype(np.float64), axis=1).astype(np.float32)
    if np.any(norms == 0):
        raise ValueError(f"{name} contain an all-zero row")
    if np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE):
        return array.copy() if copy and np.shares_memory(array, features) else array
    return array / norms[:, None]


def log_sum_exp(x: np.ndarray, axis: int = -1, scale: float = 1.0) -> np.ndarray:
    """Numerically stable ``log Σ exp(scale · x)`` along ``axis`` (max-shifted).

    Works in the input's floating dtype: float32 cosines stay float32 (the max shift bounds every
    term by 1, so float32 loses nothing that matters and halves the memory traffic).
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0).astype(x.dtype)
    terms = x - peak
    terms *= scale
    np.exp(terms, out=terms)
    total = np.sum(terms, axis=axis, dtype=np.float64)
    with np.errstate(divide="ignore"):  # an all -inf row is log(0) = -inf, as it should be
        return np.log(total) + scale * np.squeeze(peak, axis=axis).astype(np.float64)


# e^-80 ≈ 1.8e-35 is still a normal float32: rows whose scaled spread stays below this share one
# shift across all their groups without any term underflowing.
SHARED_SHIFT_SPREAD = 80.0


def row_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest value (in ``x``'s dtype) and its column: one pass over ``x``."""
    columns = x.argmax(axis=1)
    return x[np.arange(len(x)), columns], columns


def grouped_log_sum_exp(x: np.ndarray, groups: int, scale: float = 1.0, peak: np.ndarray | None = None) -> np.ndarray:
    """``log Σ_{j∈g} exp(scale · x_j)`` for each of ``groups`` consecutive column blocks: ``(B, G)``.

    ``x`` is ``(B, M)`` with ``M`` a multiple of ``groups``. When a row's scaled spread
    ``scale · (max − min)`` is at most :data:`SHARED_SHIFT_SPREAD`, the row is shifted once by its
    maximum (every term stays a normal float, so this is exact to rounding) and the ``G`` block
    sums are one reduction over a reshape; this avoids a maximum per block of ~100 columns, which
    costs more than the shift it saves. Wider rows (extreme temperatures) are shifted per block
    (:func:`log_sum_exp` on the reshape). ``peak``: each row's maximum, when the caller has it.
    """
    batch, n = x.shape
    blocks = np.reshape(x, (batch, groups, n // groups))
    if batch == 0 or n == 0 or not np.issubdtype(x.dtype, np.floating):
        return log_sum_exp(blocks, scale=scale)
    peak, low = np.max(x, axis=1) if peak is None else peak, np.min(x, axis=1)
    spread = scale * (peak.astype(np.float64) - low)
    if not (np.all(np.isfinite(spread)) and spread.max() <= SHARED_SHIFT_SPREAD):
        return log_sum_exp(blocks, scale=scale)
    terms = x - peak[:, None]
    terms *= scale
    np.exp(terms, out=terms)
    # block sums of terms in (0, 1]: numpy's pairwise float32 sum, then float64
    totals = np.reshape(terms, (batch, groups, n // groups)).sum(axis=-1).astype(np.float64)
    return np.log(totals) + scale * peak.astype(np.float64)[:, None]


def id_mass(
    id_cos: np.ndarray, neg_cos: np.ndarray, tau: float = DEFAULT_TAU, id_lse: np.ndarray | None = None
) -> np.ndarray:
    """Ungrouped negative-label score ``S(v; T-)`` for a batch.

    Args:
        id_cos: ``(B, K)`` cosine similarities to the ID labels.
        neg_cos: ``(B, M)`` cosine similarities to the negative labels (``M`` may be 0).
        tau: softmax temperature on cosines.
        id_lse: ``log_sum_exp(id_cos, scale=1/tau)`` when the caller has it (banks scored
            against the same ID labels share it).

    Returns:
        ``(B,)`` float64 scores in ``[0, 1]``; 1 when ``M == 0``.
    """
    if id_lse is None:
        id_lse = log_sum_exp(id_cos, scale=1.0 / tau)
    if neg_cos.shape[-1] == 0:
        return np.ones_like(id_lse)
    from scipy.special import expit  # scipy.special takes 0.15 s to import: on first use

    return expit(id_lse - log_sum_exp(neg_cos, scale=1.0 / tau))


def grouped_id_mass(
    id_cos: np.ndarray,
    neg_cos: np.ndarray,
    groups: int,
    tau: float = DEFAULT_TAU,
    id_lse: np.ndarray | None = None,
    neg_peak: np.ndarray | None = None,
) -> np.ndarray:
    """Mean over ``groups`` consecutive groups of the negative-label score.

    ``neg_cos`` must already be in group order (see :func:`group_order`) with a column count that
    is a multiple of ``groups``: column block ``g`` is group ``g``. Then::

        S_G(v) = (1/G) Σ_g sigmoid(LSE(id_cos/τ) − LSE(neg_cos[:, block g]/τ))

    ``id_lse`` is ``LSE(id_cos/τ)`` when the caller has it (see :func:`id_mass`), ``neg_peak``
    each row's largest negative cosine (see :func:`row_max`).
    """
    _, n_neg = neg_cos.shape
    if groups < 1 or n_neg % groups:
        raise ValueError(f"{n_neg} negative columns cannot be split into {groups} equal groups")
    if id_lse is None:
        id_lse = log_sum_exp(id_cos, scale=1.0 / tau)
    neg_lse = grouped_log_sum_exp(neg_cos, groups, scale=1.0 / tau, peak=neg_peak)
    from scipy.special import expit

    return expit(id_lse[:, None] - neg_lse).mean(axis=1)


def group_order(n_neg: int, groups: int, seed: int = 0) -> np.ndarray:
    """Indices that put a bank of ``n_neg`` negatives into NegLabel's group order.

    The last ``n_neg mod groups`` negatives are dropped, the rest permuted as
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` permutes them (the
    authors' code; :func:`torch_randperm` gives the same without torch); consecutive blocks of
    the result are the groups. A local generator keeps the global RNG untouched.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if n_neg < groups:
        raise ValueError(f"cannot form {groups} groups from {n_neg} negative labels")
    return torch_randperm(n_neg - n_neg % groups, seed)


# torch.randperm on the CPU shuffles as below up to this length and otherwise differently
_RANDPERM_SHUFFLE_LIMIT = (2**32 - 1) // 20


def torch_randperm(n: int, seed: int) -> np.ndarray:
    """``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` as int64, without torch
    (serving a saved detector need not import it).

    torch's CPU generator is the standard MT19937 seeded with the seed's low 32 bits (NumPy's
    ``RandomState`` is the same generator, seeded the same way), and ``randperm`` swaps element
    ``i`` with element ``i + u_i mod (n - i)`` for ``i < n - 1``, ``u_i`` its successive 32-bit
    outputs. Lengths past torch's shuffle limit (about 2e8) ask torch itself.
    """
    if n >= _RANDPERM_SHUFFLE_LIMIT:
        import torch

        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    order = list(range(n))
    if n > 1:
        draws = np.random.RandomState(seed & 0xFFFFFFFF).randint(0, 2**32, size=n - 1, dtype=np.uint32)
        remaining = np.arange(n, 1, -1, dtype=np.uint64)
        swaps = ((draws.astype(np.uint64) % remaining).astype(np.int64) + np.arange(n - 1)).tolist()
        for i, j in enumerate(swaps):  # sequential: each swap sees the ones before it
            order[i], order[j] = order[j], order[i]
    return np.asarray(order, dtype=np.int64)


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """``max_i softmax_i(logits)`` per row, computed as ``exp(max − LSE)``.

    Float32 logits stay float32 through the shifted exponentials (the sum is float64, see
    :func:`log_sum_exp`): no float64 copy of the ``(B, K)`` array is made. Returns float64.
    """
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    return np.exp(np.max(logits, axis=-1).astype(np.float64) - log_sum_exp(logits))


# -- TANL's kernels: activations over a label pool, the activation-aware score -------------------


def activation_aware_score(
    id_cos: np.ndarray, ranked_neg_cos: np.ndarray, tau: float = DEFAULT_TAU, step: int = 1
) -> np.ndarray:
    """``S_aa``: mean over ``m ∈ {s, 2s, ..., β}`` of the ID mass over ``ID ∪ top-m labels``.

    Args:
        id_cos: ``(B, K)`` cosines to the ID labels.
        ranked_neg_cos: ``(B, β)`` cosines to the selected labels, **most activated first**.
        tau: softmax temperature.
        step: ``s``; when ``β`` is not a multiple of ``s`` the last prefix is all ``β`` labels
            (``m_k = min(k·s, β)``, as the official slicing does).

    Returns:
        ``(B,)`` float64 in ``[0, 1]``. Log-space throughout: ``S_m = sigmoid(LSE_ID − LSE_{1..m})``
        with the prefix log-sum-exps from one cumulative ``logaddexp`` (exact at any ``tau``).
    """
    beta = ranked_neg_cos.shape[1]
    if beta == 0:
        return np.ones(len(id_cos))
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    id_lse = log_sum_exp(id_cos, scale=1.0 / tau)
    columns = np.minimum(np.arange(step, beta + step, step), beta) - 1
    from scipy.special import expit

    return expit(id_lse[:, None] - prefix_log_sum_exp(ranked_neg_cos, 1.0 / tau, columns)).mean(axis=1)


def prefix_log_sum_exp(x: np.ndarray, scale: float, columns: np.ndarray) -> np.ndarray:
    """``log Σ_{j≤c} exp(scale · x_j)`` per row, for each column ``c`` in ``columns``.

    Shifted by the row maximum, every term ``exp(scale · (x_j − max))`` lies in ``(0, 1]`` and a
    float64 cumulative sum gives each prefix to ``n·eps``; that is exact while the smallest term
    stays a normal float64 (a spread ``scale · (max − min)`` below 700: cosines at any
    ``τ ≥ 0.003``). A wider spread falls back to a cumulative ``logaddexp``, exact at any scale
    but several times slower.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros((0, len(columns)))
    peak = x.max(axis=1, keepdims=True)
    if scale * float((peak - x.min(axis=1, keepdims=True)).max()) > 700.0:
        return np.logaddexp.accumulate(x * scale, axis=1)[:, columns]
    terms = x - peak
    terms *= scale
    np.exp(terms, out=terms)
    np.cumsum(terms, axis=1, out=terms)
    return np.log(terms[:, columns]) + scale * peak


def top_labels(activation: np.ndarray, beta: int) -> np.ndarray:
    """Indices of the ``beta`` largest activations, largest first (ties: lower index first)."""
    n = len(activation)
    beta = min(beta, n)
    top = np.argpartition(-activation, beta - 1)[:beta] if beta < n else np.arange(n)
    return top[np.lexsort((top, -activation[top]))]


def activation_rows(features: np.ndarray, id_text: np.ndarray, pool_text: np.ndarray, tau: float) -> np.ndarray:
    """``(N, P)`` float32 softmax probabilities of the pool labels over ``ID ∪ pool``.

    One exponential per logit: the logits are shifted by the row maximum over ``ID ∪ pool``,
    exponentiated in place and divided by their row sum, ``p_j = e^{l_j − m} / Σ_k e^{l_k − m}``.
    ``1/τ`` is folded into the ``(N, D)`` image rows, so the ``(N, P)`` products need no scaling
    pass.
    """
    scaled = np.asarray(features, dtype=np.float32) * np.float32(1.0 / tau)
    pool = scaled @ pool_text.T
    id_logits = scaled @ id_text.T
    peak = np.maximum(pool.max(axis=1), id_logits.max(axis=1))[:, None]
    pool -= peak
    np.exp(pool, out=pool)
    id_logits -= peak
    np.exp(id_logits, out=id_logits)
    # row sums of terms in (0, 1], pairwise-summed in float32, then a float64 total
    total = pool.sum(axis=1).astype(np.float64) + id_logits.sum(axis=1).astype(np.float64)
    pool *= (1.0 / total).astype(np.float32)[:, None]
    return pool


# -- AdaNeg's kernel ---------------------------------------------------------------------------------


def softmax_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of ``softmax(logits)`` per row, ``LSE(z) − Σ p·z`` (stable at any scale)."""
    z = np.asarray(logits, dtype=np.float64)
    lse = log_sum_exp(z)
    p = np.exp(z - lse[:, None])
    return np.maximum(lse - np.sum(p * z, axis=1), 0.0)


def otsu_threshold(scores: np.ndarray, step: float = 0.01, ties: str = "middle") -> float:
    """Otsu's threshold on scores in ``[0, 1]``, scanning ``0, step, ..., 1 − step``.

    The criterion of a threshold ``t`` is the weighted within-class variance
    ``w0·var(S < t) + w1·var(S ≥ t)`` (infinite when a class is empty). Among the thresholds with
    the minimum criterion the middle one is taken (index ``len // 2`` of the candidates), as in
    the official TANL code; ``ties="first"`` takes the first one and, when no threshold splits the
    scores, returns their (lower) median, as the ANTS authors' activation-aware ENS does
    (docs/methods/ants.md, step 11). Vectorised with prefix sums over the sorted scores.
    """
    if ties not in ("middle", "first"):
        raise ValueError(f"ties must be 'middle' or 'first', got {ties!r}")
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(x)
    thresholds = np.arange(int(round(1.0 / step))) * step  # noqa: RUF046 - under NumPy < 2, round() of a NumPy float is a NumPy float
    if n == 0:
        return float(thresholds[len(thresholds) // 2])
    centred = x - x.mean()
    s1 = np.concatenate([[0.0], np.cumsum(centred)])
    s2 = np.concatenate([[0.0], np.cumsum(centred**2)])
    k = np.searchsorted(x, thresholds, side="left")  # size of the lower class
    with np.errstate(divide="ignore", invalid="ignore"):
        within_low = s2[k] - s1[k] ** 2 / k
        within_high = (s2[n] - s2[k]) - (s1[n] - s1[k]) ** 2 / (n - k)
    criterion = np.where((k == 0) | (k == n), np.inf, np.maximum(within_low + within_high, 0.0) / n)
    if ties == "first":
        if not np.isfinite(criterion).any():
            return float(x[(n - 1) // 2])
        return float(thresholds[int(np.argmin(criterion))])
    candidates = np.flatnonzero(criterion == criterion.min())
    return float(thresholds[candidates[len(candidates) // 2]])
