"""The shared log-space score against direct formulas, and its numerical safety."""

import numpy as np
import pytest
import torch

from negspace.scoring import group_order, grouped_id_mass, id_mass, log_sum_exp, max_softmax, torch_randperm

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


def direct_grouped_score(id_cos, neg_cos, groups, tau, seed=0):
    """The reference implementations' loop, in float64 with raw exponentials."""
    n = neg_cos.shape[1] - neg_cos.shape[1] % groups
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    blocks = neg_cos[:, :n][:, perm].reshape(len(neg_cos), groups, -1)
    scores = []
    for g in range(groups):
        full = np.exp(np.concatenate([id_cos, blocks[:, g]], axis=1) / tau)
        scores.append(full[:, : id_cos.shape[1]].sum(1) / full.sum(1))
    return np.mean(scores, axis=0)


@pytest.mark.parametrize("groups", [1, 7, 10])
def test_grouped_score_matches_direct_formula(groups):
    rng = np.random.default_rng(1)
    id_cos = rng.uniform(-0.1, 0.35, (16, 12))
    neg_cos = rng.uniform(-0.1, 0.35, (16, 75))  # 75 is not a multiple of 7 or 10: some dropped
    order = group_order(75, groups)
    ours = grouped_id_mass(id_cos, neg_cos[:, order], groups, tau=0.05)
    np.testing.assert_allclose(ours, direct_grouped_score(id_cos, neg_cos, groups, tau=0.05), rtol=1e-10)


def test_group_order_reproduces_torch_randperm_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    order = group_order(1005, 100, seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)
    expected = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(order, expected)
    np.random.seed(7)  # noqa: NPY002 - the legacy global generator, which group_order must leave alone
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    group_order(1005, 100, seed=3)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002 - nor NumPy's global one


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 1000, 70_001])
@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32 + 5, -1])
def test_torch_randperm_is_torch_s_permutation_without_torch(n, seed):
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    got = torch_randperm(n, seed)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_ungrouped_score_is_id_softmax_mass():
    rng = np.random.default_rng(2)
    id_cos, neg_cos = rng.uniform(0, 0.3, (5, 4)), rng.uniform(0, 0.3, (5, 9))
    logits = np.exp(np.concatenate([id_cos, neg_cos], 1) / 0.1)
    np.testing.assert_allclose(id_mass(id_cos, neg_cos, tau=0.1), logits[:, :4].sum(1) / logits.sum(1))


def test_no_nan_or_inf_at_tau_001_with_extreme_cosines():
    id_cos = np.array([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    neg_cos = np.array([[-1.0] * 4, [1.0] * 4, [1.0] * 4, [-1.0] * 4], dtype=np.float32)
    # With ties the ID mass is 2 / (2 + negatives in the group): 4 ungrouped, 2 per group.
    for scores, tie in ((id_mass(id_cos, neg_cos, 0.01), 2 / 6), (grouped_id_mass(id_cos, neg_cos, 2, 0.01), 2 / 4)):
        assert np.all(np.isfinite(scores))
        assert scores[0] == pytest.approx(1.0)
        assert 0.0 <= scores[1] < 1e-80  # e^-200 relative mass: tiny but not NaN
        assert scores[2] == pytest.approx(tie)
        assert scores[3] == pytest.approx(tie)


def test_log_sum_exp_handles_large_values_and_minus_infinity():
    x = np.array([[1000.0, 1000.0], [-np.inf, 0.0], [-np.inf, -np.inf]])
    out = log_sum_exp(x)
    assert out[0] == pytest.approx(1000 + np.log(2))
    assert out[1] == pytest.approx(0.0)
    assert out[2] == -np.inf


def test_max_softmax_matches_direct_softmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 30))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(max_softmax(logits), soft.max(1))


def test_bad_grouping_is_rejected_clearly():
    with pytest.raises(ValueError, match="groups"):
        group_order(5, 10)
    with pytest.raises(ValueError, match="equal groups"):
        grouped_id_mass(np.zeros((1, 2)), np.zeros((1, 7)), 2)
