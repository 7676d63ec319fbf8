"""The shared core of every negative-label method (SPEC section 1), as pure log-space functions.

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
from scipy.special import expit

DEFAULT_TAU = 0.01


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


def grouped_log_sum_exp(x: np.ndarray, groups: int, scale: float = 1.0) -> np.ndarray:
    """``log Σ_{j∈g} exp(scale · x_j)`` for each of ``groups`` consecutive column blocks: ``(B, G)``.

    ``x`` is ``(B, M)`` with ``M`` a multiple of ``groups``. When a row's scaled spread
    ``scale · (max − min)`` is at most :data:`SHARED_SHIFT_SPREAD`, the row is shifted once by its
    maximum (every term stays a normal float, so this is exact to rounding) and the ``G`` block
    sums are one reduction over a reshape; this avoids a maximum per block of ~100 columns, which
    costs more than the shift it saves. Wider rows (extreme temperatures) are shifted per block
    (:func:`log_sum_exp` on the reshape).
    """
    batch, n = x.shape
    blocks = np.reshape(x, (batch, groups, n // groups))
    if batch == 0 or n == 0 or not np.issubdtype(x.dtype, np.floating):
        return log_sum_exp(blocks, scale=scale)
    peak, low = np.max(x, axis=1), np.min(x, axis=1)
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
    return expit(id_lse - log_sum_exp(neg_cos, scale=1.0 / tau))


def grouped_id_mass(
    id_cos: np.ndarray,
    neg_cos: np.ndarray,
    groups: int,
    tau: float = DEFAULT_TAU,
    id_lse: np.ndarray | None = None,
) -> np.ndarray:
    """Mean over ``groups`` consecutive groups of the negative-label score.

    ``neg_cos`` must already be in group order (see :func:`group_order`) with a column count that
    is a multiple of ``groups``: column block ``g`` is group ``g``. Then::

        S_G(v) = (1/G) Σ_g sigmoid(LSE(id_cos/τ) − LSE(neg_cos[:, block g]/τ))

    ``id_lse`` is ``LSE(id_cos/τ)`` when the caller has it (see :func:`id_mass`).
    """
    batch, n_neg = neg_cos.shape
    if groups < 1 or n_neg % groups:
        raise ValueError(f"{n_neg} negative columns cannot be split into {groups} equal groups")
    if id_lse is None:
        id_lse = log_sum_exp(id_cos, scale=1.0 / tau)
    neg_lse = grouped_log_sum_exp(neg_cos, groups, scale=1.0 / tau)
    return expit(id_lse[:, None] - neg_lse).mean(axis=1)


def group_order(n_neg: int, groups: int, seed: int = 0) -> np.ndarray:
    """Indices that put a bank of ``n_neg`` negatives into NegLabel's group order.

    The last ``n_neg mod groups`` negatives are dropped, the rest permuted with
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``; consecutive blocks of
    the result are the groups. A local generator keeps the global RNG untouched.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if n_neg < groups:
        raise ValueError(f"cannot form {groups} groups from {n_neg} negative labels")
    import torch  # only for its randperm stream; keeps `import negspace` light

    kept = n_neg - n_neg % groups
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(kept, generator=generator).numpy()


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """``max_i softmax_i(logits)`` per row, computed as ``exp(max − LSE)``.

    Float32 logits stay float32 through the shifted exponentials (the sum is float64, see
    :func:`log_sum_exp`): no float64 copy of the ``(B, K)`` array is made. Returns float64.
    """
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    return np.exp(np.max(logits, axis=-1).astype(np.float64) - log_sum_exp(logits))
