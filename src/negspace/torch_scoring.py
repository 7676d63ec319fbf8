"""The scoring kernels of :mod:`negspace.scoring` on torch tensors (``backend="torch"``).

Same names, arguments and formulas as the NumPy kernels, so a detector runs either set
unchanged: float32 products and shifted exponentials, float64 sums and outputs. On CUDA a
batch's features, the text banks and TANL's queues stay on the device; only per-image scores
(and the few per-image values the detectors' bookkeeping reads) come back to the host. The two
sets agree to 1e-5 (``tests/test_backends.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from negspace.scoring import SHARED_SHIFT_SPREAD


def as_unit_rows(features: Any, name: str, dim: int | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """:func:`negspace.detectors.base.as_unit_rows` for NumPy arrays or tensors: float32 on ``device``."""
    tensor = torch.as_tensor(features, dtype=torch.float32, device=device)
    if tensor.ndim == 1:
        tensor = tensor[None, :]
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {tuple(tensor.shape)}")
    if dim is not None and tensor.shape[1] != dim:
        raise ValueError(f"{name} have dimension {tensor.shape[1]}, expected {dim}")
    norms = torch.linalg.vector_norm(tensor, dim=1)
    if not bool(torch.isfinite(norms).all()):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contain NaN or infinity")
        norms = torch.linalg.vector_norm(tensor.double(), dim=1).float()
    if bool((norms == 0).any()):
        raise ValueError(f"{name} contain an all-zero row")
    if bool(((norms - 1.0).abs() <= 1e-6).all()):
        return tensor
    return tensor / norms[:, None]


def log_sum_exp(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``log Σ exp(scale · x)`` over the last dimension (max-shifted, float64 sum and result)."""
    peak = x.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    terms = (x - peak).mul_(scale).exp_()
    total = terms.sum(dim=-1, dtype=torch.float64)
    return total.log() + scale * peak.squeeze(-1).double()


def row_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's largest value and its column: one pass over ``x``."""
    values, columns = x.max(dim=1)
    return values, columns


def grouped_log_sum_exp(
    x: torch.Tensor, groups: int, scale: float = 1.0, peak: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, G)`` log-sum-exps of ``groups`` consecutive column blocks (see the NumPy kernel)."""
    batch, n = x.shape
    blocks = x.reshape(batch, groups, n // groups)
    if batch == 0 or n == 0:
        return log_sum_exp(blocks, scale)
    peak, low = x.amax(dim=1) if peak is None else peak, x.amin(dim=1)
    spread = scale * (peak.double() - low.double())
    if not (bool(torch.isfinite(spread).all()) and float(spread.max()) <= SHARED_SHIFT_SPREAD):
        return log_sum_exp(blocks, scale)
    terms = (x - peak[:, None]).mul_(scale).exp_()
    totals = terms.reshape(batch, groups, n // groups).sum(dim=-1, dtype=torch.float64)
    return totals.log() + scale * peak.double()[:, None]


def id_mass(
    id_cos: torch.Tensor, neg_cos: torch.Tensor, tau: float, id_lse: torch.Tensor | None = None
) -> torch.Tensor:
    """``S(v; T-) = sigmoid(LSE_ID − LSE_neg)``, float64; 1 when there are no negatives."""
    if id_lse is None:
        id_lse = log_sum_exp(id_cos, 1.0 / tau)
    if neg_cos.shape[-1] == 0:
        return torch.ones_like(id_lse)
    return torch.sigmoid(id_lse - log_sum_exp(neg_cos, 1.0 / tau))


def grouped_id_mass(
    id_cos: torch.Tensor,
    neg_cos: torch.Tensor,
    groups: int,
    tau: float,
    id_lse: torch.Tensor | None = None,
    neg_peak: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over ``groups`` consecutive column blocks of the negative-label score, float64."""
    _, n_neg = neg_cos.shape
    if groups < 1 or n_neg % groups:
        raise ValueError(f"{n_neg} negative columns cannot be split into {groups} equal groups")
    if id_lse is None:
        id_lse = log_sum_exp(id_cos, 1.0 / tau)
    return torch.sigmoid(id_lse[:, None] - grouped_log_sum_exp(neg_cos, groups, 1.0 / tau, neg_peak)).mean(dim=1)


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``max_i softmax_i(logits)`` per row as ``exp(max − LSE)``, float64."""
    return torch.exp(logits.amax(dim=-1).double() - log_sum_exp(logits))


def activation_rows(features: torch.Tensor, id_text: torch.Tensor, pool_text: torch.Tensor, tau: float) -> torch.Tensor:
    """``(N, P)`` float32 softmax probabilities of the pool labels over ``ID ∪ pool``."""
    scaled = features * (1.0 / tau)
    pool = scaled @ pool_text.T
    id_logits = scaled @ id_text.T
    peak = torch.maximum(pool.amax(dim=1), id_logits.amax(dim=1))[:, None]
    pool.sub_(peak).exp_()
    id_logits.sub_(peak).exp_()
    total = pool.sum(dim=1, dtype=torch.float64) + id_logits.sum(dim=1, dtype=torch.float64)
    return pool.mul_((1.0 / total).float()[:, None])


def prefix_log_sum_exp(x: torch.Tensor, scale: float, columns: torch.Tensor) -> torch.Tensor:
    """``log Σ_{j≤c} exp(scale · x_j)`` per row for each column ``c`` (float64 cumulative sums)."""
    x = x.double()
    if x.shape[0] == 0:
        return x.new_zeros((0, len(columns)))
    peak = x.amax(dim=1, keepdim=True)
    if scale * float((peak - x.amin(dim=1, keepdim=True)).max()) > 700.0:
        return torch.logcumsumexp(x * scale, dim=1)[:, columns]
    terms = (x - peak).mul_(scale).exp_().cumsum_(dim=1)
    return terms[:, columns].log() + scale * peak


def activation_aware_score(
    id_cos: torch.Tensor, ranked_neg_cos: torch.Tensor, tau: float, step: int = 1
) -> torch.Tensor:
    """TANL's ``S_aa``: mean over prefixes ``m = s, 2s, ..., β`` of the ID mass, float64."""
    beta = ranked_neg_cos.shape[1]
    if beta == 0:
        return torch.ones(len(id_cos), dtype=torch.float64, device=id_cos.device)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    id_lse = log_sum_exp(id_cos, 1.0 / tau)
    columns = torch.as_tensor(np.minimum(np.arange(step, beta + step, step), beta) - 1, device=id_cos.device)
    return torch.sigmoid(id_lse[:, None] - prefix_log_sum_exp(ranked_neg_cos, 1.0 / tau, columns)).mean(dim=1)


def top_labels(activation: torch.Tensor, beta: int) -> torch.Tensor:
    """Indices of the ``beta`` largest activations, largest first (ties: lower index first)."""
    beta = min(beta, len(activation))
    top = torch.topk(activation, beta, sorted=False).indices.sort().values
    return top[torch.sort(activation[top], descending=True, stable=True).indices]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per row, ``LSE(z) − Σ p·z``, float64 (AdaNeg's slots)."""
    z = logits.double()
    lse = log_sum_exp(z)
    p = torch.exp(z - lse[:, None])
    return torch.clamp(lse - (p * z).sum(dim=1), min=0.0)
