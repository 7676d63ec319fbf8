"""How close two float32 computations of the same scores must be: one bound, derived once.

Every negspace score is a softmax mass, or a weighted sum of softmax masses, of logits
``z = cos / tau`` where ``cos`` is a float32 dot product of unit ``D``-vectors. Two computations of
the same score that differ only in the order of their float32 sums (another BLAS kernel: AVX2,
AVX-512, SSE, another vendor; another batch shape, hence another blocking; torch instead of
NumPy; a float64 restatement) differ by:

1. **Cosines.** A length-``D`` float32 dot product of unit vectors carries a rounding error whose
   worst case is ``D·u`` (``u = 2**-24``) but which, summed from independent roundings, stays
   within about ``√D·u`` (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1 and the
   rule of thumb after (3.11)). Measured here against a float64 product over 2M pairs and four
   OpenBLAS kernel families plus torch: at most ``0.85·√D·u``. Two computations may each err in
   opposite directions, so ``|Δcos| <= EPS_COS(D) = COSINE_ERROR_UNITS·√D·u`` with
   ``COSINE_ERROR_UNITS = 4`` (twice the difference of two measured worst cases).
2. **Logits.** ``|Δz| <= delta = EPS_COS(D) / tau``: at tau = 0.01 the error grows a hundredfold.
3. **Scores.** A softmax mass is ``s = σ(L)`` with ``L`` a difference of two log-sum-exps, each of
   which moves by at most ``delta`` when every logit does, so ``|ΔL| <= 2·delta``. Since
   ``σ(L + h) / σ(L) <= e^|h|`` and likewise for ``1 − σ``,
   ``|Δs| <= min(s, 1 − s) · expm1(2·delta)``: relative for tiny probabilities, absolute in the
   middle. ``min(s, 1 − s)`` is concave, so a weighted mean of masses (TANL's mean over prefixes)
   or a weighted sum of total weight ``W`` (AdaNeg's ``S + 0.1·S_nl``, ``W = 1.1``) obeys the same
   bound with ``W·min(s/W, 1 − s/W)``.
4. **Storage.** The float32 result itself rounds by ``u·|s|``; ``FLOOR`` absorbs subnormal noise.
5. **Features from another encoding.** When the two scores come from images encoded in other
   batches (the CLI against a test's own encoding), the features differ too; unit features at
   distance ``e`` change each cosine by at most ``e`` (Cauchy-Schwarz), so ``feature_error`` adds
   ``2e`` to ``EPS_COS``. ``FEATURE_ERROR`` is that distance: the agreement
   :func:`assert_features_close` demands of features encoded in batches of other sizes (a network
   of float32 layers has no closed-form bound; the tiny test models measure below ``5e-7``, about
   ``8u``, across batch sizes and both backends, so ``1e-5`` leaves a factor 20).
6. **Selections.** Labels picked by ranking a float32 key (the lowest ratios, the largest
   deviations) may differ only where two keys lie within the keys' float32 error of each other: at
   the cut, or in the order inside the pick (:func:`assert_same_selection`).

"Exactly equal" is asserted only where the same code runs on the same shapes (a saved and a
loaded detector scoring the same batch); everything else uses :func:`assert_scores_close`.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = 2.0**-24  # float32: half an ulp of 1
COSINE_ERROR_UNITS = 4.0
FLOOR = 1e-30
FEATURE_ERROR = 1e-5


def cosine_error(dim: int) -> float:
    """``EPS_COS(D)``: how far two float32 cosines of the same unit ``dim``-vectors may differ."""
    return COSINE_ERROR_UNITS * np.sqrt(dim) * UNIT_ROUNDOFF


def score_bound(
    reference: np.ndarray, *, tau: float, dim: int, weight: float = 1.0, feature_error: float = 0.0
) -> np.ndarray:
    """The largest ``|Δs|`` two float32 computations of the scores ``reference`` may show.

    Args:
        reference: one of the two computations (or a float64 restatement).
        tau: the temperature of the logits (``cos / tau``); MCM's ``temperature``.
        dim: the feature dimension ``D``.
        weight: total weight ``W`` of the softmax masses a score sums (1 for a single mass).
        feature_error: distance between the two computations' unit features (0: the same features).
    """
    s = np.asarray(reference, dtype=np.float64)
    q = np.clip(s / weight, 0.0, 1.0)
    delta = (cosine_error(dim) + 2 * feature_error) / tau
    return weight * np.minimum(q, 1.0 - q) * np.expm1(2.0 * delta) + 2 * UNIT_ROUNDOFF * np.abs(s) + FLOOR


def assert_scores_close(
    actual, desired, *, tau: float = 0.01, dim: int, weight: float = 1.0, feature_error: float = 0.0, err_msg: str = ""
) -> None:
    """``actual`` equals ``desired`` within the float32 bound of :func:`score_bound`."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"shapes {actual.shape} != {desired.shape} {err_msg}"
    options = {"tau": tau, "dim": dim, "weight": weight, "feature_error": feature_error}
    bound = np.maximum(score_bound(desired, **options), score_bound(actual, **options))
    excess = np.abs(actual - desired) - bound
    if (excess > 0).any() or np.isnan(actual).any() != np.isnan(desired).any():
        worst = int(np.nanargmax(excess))
        raise AssertionError(
            f"{int((excess > 0).sum())} of {actual.size} scores differ beyond the float32 bound "
            f"(tau={tau}, D={dim}, W={weight}); worst at {worst}: {actual.flat[worst]!r} vs "
            f"{desired.flat[worst]!r}, bound {bound.flat[worst]:.3g} {err_msg}"
        )


def assert_same_ranking(actual, desired, *, tau: float = 0.01, dim: int, weight: float = 1.0) -> None:
    """Every pair of scores that ``desired`` separates by more than the float32 bound is ordered
    the same way in ``actual`` (pairs closer than the bound may swap)."""
    actual = np.asarray(actual, dtype=np.float64).ravel()
    desired = np.asarray(desired, dtype=np.float64).ravel()
    bound = score_bound(desired, tau=tau, dim=dim, weight=weight)
    gap = desired[:, None] - desired[None, :]
    separated = np.abs(gap) > bound[:, None] + bound[None, :]
    flipped = separated & (np.sign(actual[:, None] - actual[None, :]) != np.sign(gap))
    assert not flipped.any(), f"{int(flipped.sum()) // 2} well-separated pairs change order"


def assert_features_close(actual, desired, *, err_msg: str = "") -> None:
    """Each row of ``actual`` lies within ``FEATURE_ERROR`` of the same row of ``desired``, as a
    Euclidean distance relative to the row's norm (the distance of unit features; raw, unnormalised
    features are compared at their own scale)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"shapes {actual.shape} != {desired.shape} {err_msg}"
    actual, desired = actual.reshape(len(actual), -1), desired.reshape(len(desired), -1)
    scale = np.maximum(np.linalg.norm(desired, axis=1), FLOOR)
    distance = np.linalg.norm(actual - desired, axis=1) / scale
    if not (distance <= FEATURE_ERROR).all():  # NaN fails too
        worst = int(np.nanargmax(np.where(np.isnan(distance), np.inf, distance)))
        raise AssertionError(
            f"{int((~(distance <= FEATURE_ERROR)).sum())} of {len(distance)} feature rows lie farther than "
            f"{FEATURE_ERROR:g} apart; worst row {worst}: {distance[worst]:.3g} {err_msg}"
        )


def assert_same_selection(actual, desired, key, *, bound: float, descending: bool = False, free=None) -> None:
    """Two selections of the same items by rank of a float32 key agree up to float32 near-ties.

    ``actual`` and ``desired`` are index arrays, each the items with the lowest (``descending``:
    largest) key in rank order, computed in float32 by two codes (NumPy and torch, another BLAS).
    ``key`` is the key restated in float64 and ``bound`` how far a float32 computation of it may
    lie from ``key``. Two items whose keys differ by more than ``2 * bound`` are ordered the same way
    by both computations, so: an item picked by only one side has a key within ``2 * bound`` of the
    other side's last pick, and two items both picked in opposite orders have keys within
    ``2 * bound``. Items marked in the boolean mask ``free`` (a threshold test within ``bound`` of
    its threshold, so either outcome is right) are exempt.
    """
    actual = np.asarray(actual).ravel()
    desired = np.asarray(desired).ravel()
    key = np.asarray(key, dtype=np.float64)
    key = -key if descending else key
    free = np.zeros(len(key), bool) if free is None else np.asarray(free, bool)
    assert len(actual) == len(desired), f"{len(actual)} items picked, not {len(desired)}"
    tie = 2 * bound
    for one, other, name in ((actual, desired, "actual"), (desired, actual, "desired")):
        only = [int(i) for i in np.setdiff1d(one, other) if not free[i]]
        last = key[[i for i in other if not free[i]]].max(initial=-np.inf)
        far = [i for i in only if key[i] < last - tie]
        assert not far, (
            f"items {far[:10]} picked only by {name}, keys {key[far[:10]]} well inside the "
            f"other's last pick {float(last)!r} (bound {tie:.3g})"
        )
    common = np.intersect1d(actual, desired)
    common = common[~free[common]]
    rank_a = {int(i): r for r, i in enumerate(actual)}
    rank_d = {int(i): r for r, i in enumerate(desired)}
    ra, rd = np.array([rank_a[int(i)] for i in common]), np.array([rank_d[int(i)] for i in common])
    gap = key[common][:, None] - key[common][None, :]
    swapped = (np.sign(ra[:, None] - ra[None, :]) != np.sign(rd[:, None] - rd[None, :])) & (np.abs(gap) > tie)
    assert not swapped.any(), (
        f"{int(swapped.sum()) // 2} pairs picked by both, keys farther apart than {tie:.3g}, change order"
    )
