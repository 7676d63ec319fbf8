"""The torch kernels and ``backend="torch"`` detectors agree with the NumPy path.

torch and NumPy run different BLAS kernels, so scores agree within the float32 bound of
:mod:`numerics` (the same bound holds between two CPUs), not to the last digit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negspace import scoring, torch_scoring
from negspace.backend import resolve_backend, to_numpy
from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.tanl import TANL
from negspace.testing import make_world
from numerics import UNIT_ROUNDOFF, assert_scores_close, score_bound

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)

KERNELS = (
    "log_sum_exp",
    "grouped_log_sum_exp",
    "id_mass",
    "grouped_id_mass",
    "max_softmax",
    "activation_rows",
    "prefix_log_sum_exp",
    "activation_aware_score",
    "top_labels",
    "softmax_entropy",
)


DIM = 32


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array)


def test_both_kernel_sets_define_every_kernel():
    for name in KERNELS:
        assert callable(getattr(scoring, name)) and callable(getattr(torch_scoring, name)), name


@pytest.mark.parametrize("tau", [0.01, 0.001])
def test_negative_label_kernels_agree(tau):
    rng = np.random.default_rng(0)
    image, id_text, bank = _unit(rng, 40), _unit(rng, 30), _unit(rng, 600)
    id_cos, neg_cos = image @ id_text.T, image @ bank.T
    neg_cos[:3, :7] = -1.0  # a wide spread in some rows: the per-block shift at tau = 0.001
    for groups in (1, 6, 100):
        want = scoring.grouped_id_mass(id_cos, neg_cos, groups, tau)
        got = to_numpy(torch_scoring.grouped_id_mass(_t(id_cos), _t(neg_cos), groups, tau))
        assert_scores_close(got, want, tau=tau, dim=DIM)
    assert_scores_close(
        to_numpy(torch_scoring.id_mass(_t(id_cos), _t(neg_cos), tau)),
        scoring.id_mass(id_cos, neg_cos, tau),
        tau=tau,
        dim=DIM,
    )
    assert_scores_close(
        to_numpy(torch_scoring.max_softmax(_t(id_cos / tau))), scoring.max_softmax(id_cos / tau), tau=tau, dim=DIM
    )
    # float64 on both sides, from the same logits
    np.testing.assert_allclose(
        to_numpy(torch_scoring.softmax_entropy(_t(id_cos / tau))),
        scoring.softmax_entropy(id_cos / tau),
        rtol=1e-5,
        atol=1e-9,
    )


@pytest.mark.parametrize("tau", [0.01, 0.001])
def test_tanl_kernels_agree(tau):
    rng = np.random.default_rng(1)
    image, id_text, pool = _unit(rng, 20), _unit(rng, 30), _unit(rng, 500)
    assert_scores_close(
        to_numpy(torch_scoring.activation_rows(_t(image), _t(id_text), _t(pool), tau)),
        scoring.activation_rows(image, id_text, pool, tau),
        tau=tau,
        dim=DIM,
    )
    ranked = image @ pool[:200].T
    for step in (1, 7):
        want = scoring.activation_aware_score(image @ id_text.T, ranked, tau, step)
        got = torch_scoring.activation_aware_score(_t(image @ id_text.T), _t(ranked), tau, step)
        assert_scores_close(to_numpy(got), want, tau=tau, dim=DIM)
    activation = rng.standard_normal(500)
    activation[[3, 9, 40]] = activation.max() + 1.0  # a three-way tie at the top: lower index first
    np.testing.assert_array_equal(
        to_numpy(torch_scoring.top_labels(_t(activation), 50), np.int64), scoring.top_labels(activation, 50)
    )


@pytest.fixture(scope="module")
def world():
    return make_world(n_corpus=2000, n_classes=20, n_per_class=20, n_per_concept=60, seed=3)


def test_stateless_detectors_agree_on_torch(world):
    batch = np.concatenate([world.id_image_features, world.far_ood_features])
    negatives = world.corpus_features[:1000]
    for tau, build in (
        (1.0, lambda **kw: MCM.from_features(world.id_text_features, **kw)),
        (0.01, lambda **kw: MCM.from_features(world.id_text_features, temperature=0.01, **kw)),
        (0.01, lambda **kw: NegLabel.from_features(world.id_text_features, negatives, groups=10, **kw)),
    ):
        want = build().score_features(batch)
        on_torch = build(backend="torch", device="cpu")
        assert_scores_close(on_torch.score_features(batch), want, tau=tau, dim=world.dim)
        # a tensor batch is scored in place, with the same result
        assert_scores_close(on_torch.score_features(torch.as_tensor(batch)), want, tau=tau, dim=world.dim)


def test_tanl_on_torch_follows_the_numpy_stream(world):
    noise = np.random.default_rng(4).standard_normal((15, world.dim)).astype(np.float32)
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    stream = stream[np.random.default_rng(5).permutation(len(stream))]
    params = {"queue_length": 30, "beta": 150, "otsu_window": 200}
    on_numpy = TANL.from_features(world.id_text_features, world.corpus_features, noise, **params)
    on_torch = TANL.from_features(
        world.id_text_features, world.corpus_features, noise, backend="torch", device="cpu", **params
    )
    for start in range(0, len(stream), 40):
        batch = stream[start : start + 40]
        assert_scores_close(on_torch.score_features(batch), on_numpy.score_features(batch), dim=world.dim)
    assert on_torch.state_.ood_queue.count == 30  # the queues filled and turned over on the device
    # the queues hold the same rows of softmax probabilities, each within the score bound
    for queue in ("id_queue", "ood_queue"):
        assert_scores_close(
            to_numpy(getattr(on_torch.state_, queue).rows()), getattr(on_numpy.state_, queue).rows(), dim=world.dim
        )
    on_torch.reset()
    on_numpy.reset()
    assert_scores_close(on_torch.score_features(stream[:40]), on_numpy.score_features(stream[:40]), dim=world.dim)


@pytest.mark.parametrize("proxy", ["task", "sample"])
def test_adaneg_on_torch_follows_the_numpy_stream(world, proxy):
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    stream = stream[np.random.default_rng(6).permutation(len(stream))]
    negatives = world.corpus_features[:500]
    on_numpy = AdaNeg.from_features(world.id_text_features, negatives, proxy=proxy, memory_length=4)
    on_torch = AdaNeg.from_features(
        world.id_text_features, negatives, proxy=proxy, memory_length=4, backend="torch", device="cpu"
    )
    for start in range(0, len(stream), 40):
        batch = stream[start : start + 40]
        assert_scores_close(
            on_torch.score_features(batch),
            on_numpy.score_features(batch),
            dim=world.dim,
            weight=1.0 + on_numpy.nl_weight,
        )
    # the same samples were cached in the same slots, and the memories did fill up
    np.testing.assert_array_equal(on_torch.state_.filled, on_numpy.state_.filled)
    assert on_numpy.state_.filled.max() == 4
    # proxies: means of unit float32 features, renormalised; each coordinate within a few ulps of 1
    np.testing.assert_allclose(on_torch.state_.proxies, on_numpy.state_.proxies, atol=16 * UNIT_ROUNDOFF)
    if on_torch.state_.scoring_proxies is not None:  # task mode: the scored proxies on the device, in scoring order
        np.testing.assert_array_equal(
            to_numpy(on_torch.state_.scoring_proxies, np.float32), on_torch.state_.proxies[on_torch._scored_labels]
        )


def test_backend_choices_are_checked_in_one_sentence():
    assert resolve_backend().name == "numpy"
    assert resolve_backend("torch", "cpu").device == "cpu"
    with pytest.raises(ValueError, match="backend must be one of numpy, torch"):
        resolve_backend("jax")
    with pytest.raises(ValueError, match="needs backend='torch'"):
        resolve_backend("numpy", "cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_backend("torch", "gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_backend("torch", "cuda")
        assert resolve_backend("torch", "auto").device == "cpu"


@pytest.mark.parametrize("preset", ["default", "two-pass", "authors"])
def test_ants_on_torch_builds_the_same_banks_and_scores(preset):
    from negspace.detectors.ants.config import ANTSConfig
    from test_ants import SCHEDULE, build, run

    ants_world = make_world(n_per_class=20, n_per_concept=60)
    corpus = ants_world.negatives(1000)
    options = {
        "default": {},
        "two-pass": {"two_pass": True},
        "authors": {"config": ANTSConfig.authors(**SCHEDULE, ens_score="activation")},
    }[preset]
    on_numpy = build(ants_world, corpus, **options)
    on_torch = build(ants_world, corpus, backend="torch", device="cpu", **options)
    want, got = run(on_numpy, ants_world, "far"), run(on_torch, ants_world, "far")
    assert on_torch.state.ens_texts == on_numpy.state.ens_texts and len(on_numpy.state.ens_texts) > 0
    assert on_torch.state.vsnl_texts == on_numpy.state.vsnl_texts
    # lam = (1 - a) / ((1 - a) + (1 - b)) of two mean scores a, b, each within the score bound
    a, b, lam = on_numpy.lam_terms()
    da, db = (float(score_bound(np.asarray(x), dim=ants_world.dim, tau=0.01)) for x in (a, b))
    assert abs(on_torch.lam - lam) <= (da * (1 - b) + db * (1 - a)) / ((1 - a) + (1 - b)) ** 2 * 1.01
    for got_scores, want_scores in zip(got, want, strict=False):
        # S_ada = lam * S_ens + (1 - lam) * S_vsnl, plus what lam's own error moves
        assert_scores_close(got_scores, want_scores, dim=ants_world.dim, weight=1.0 + abs(on_torch.lam - lam))
