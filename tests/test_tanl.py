"""TANL (docs/methods/tanl.md): activation-aware score, Otsu split, bounded queues, stream behaviour."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from negspace.detectors.neglabel import NegLabel
from negspace.detectors.noise import NOISE_KINDS, make_noise_images
from negspace.detectors.tanl import TANL, activation_aware_score, otsu_threshold, top_labels
from negspace.evaluation import EncodedSet, evaluate_detector, evaluate_stream
from negspace.testing import make_world
from numerics import assert_scores_close

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world():
    return make_world(n_corpus=3000, n_classes=20, n_per_class=25, n_per_concept=100, seed=0)


@pytest.fixture(scope="module")
def noise(world):
    return _unit(np.random.default_rng(1).standard_normal((15, world.dim)))


def _sets(world):
    def encoded(name, features):
        return EncodedSet(name, features, [f"{name}{i}" for i in range(len(features))])

    return encoded("id", world.id_image_features), encoded("far", world.far_ood_features)


def _reference_aa(id_cos, ranked, tau, step):
    """Direct formula: loops, float64, raw exp (moderate tau only)."""
    id_cos, ranked = np.asarray(id_cos, np.float64), np.asarray(ranked, np.float64)
    beta = ranked.shape[1]
    out = []
    for b in range(len(id_cos)):
        id_sum = sum(np.exp(c / tau) for c in id_cos[b])
        values, m = [], step
        while True:
            m_eff = min(m, beta)
            neg_sum = sum(np.exp(ranked[b, j] / tau) for j in range(m_eff))
            values.append(id_sum / (id_sum + neg_sum))
            if m_eff == beta:
                break
            m += step
        out.append(np.mean(values))
    return np.array(out)


@pytest.mark.parametrize("step", [1, 3, 7])
def test_activation_aware_score_matches_direct_formula(step):
    rng = np.random.default_rng(0)
    id_cos = rng.uniform(-0.3, 0.5, (6, 5))
    ranked = rng.uniform(-0.3, 0.5, (6, 20))
    got = activation_aware_score(id_cos, ranked, tau=0.1, step=step)
    np.testing.assert_allclose(got, _reference_aa(id_cos, ranked, 0.1, step), rtol=1e-10, atol=1e-12)


def test_activation_aware_score_is_finite_with_extreme_cosines():
    id_cos = np.array([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    ranked = np.array([[-1.0] * 4, [1.0] * 4, [1.0] * 4, [-1.0] * 4], dtype=np.float32)
    for tau in (0.01, 0.001):
        got = activation_aware_score(id_cos, ranked, tau=tau, step=1)
        assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    got = activation_aware_score(id_cos, ranked, tau=0.01)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(0.0, abs=1e-80)
    # equal logits everywhere: S_m = 2 / (2 + m), averaged over m = 1..4
    assert got[2] == pytest.approx(np.mean([2 / (2 + m) for m in range(1, 5)]))


def test_step_equal_to_beta_is_the_plain_id_mass():
    rng = np.random.default_rng(3)
    id_cos, ranked = rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, (4, 9))
    got = activation_aware_score(id_cos, ranked, tau=0.5, step=9)
    np.testing.assert_allclose(got, _reference_aa(id_cos, ranked, 0.5, 9))


def test_otsu_lands_between_the_modes():
    rng = np.random.default_rng(0)
    scores = np.clip(np.concatenate([rng.normal(0.2, 0.04, 3000), rng.normal(0.8, 0.04, 1000)]), 0, 1)
    t = otsu_threshold(scores)
    assert 0.35 < t < 0.65


def test_otsu_ties_take_the_middle_candidate():
    # Two point masses: every threshold in (0.1, 0.9] splits them alike -> all tie; middle one wins.
    scores = np.array([0.1] * 5 + [0.9] * 5)
    candidates = np.arange(11, 91) / 100  # 0.11 .. 0.90 separate the masses
    assert otsu_threshold(scores) == pytest.approx(candidates[len(candidates) // 2])


def test_top_labels_orders_by_activation():
    activation = np.array([0.1, 0.5, 0.5, -1.0, 0.9])
    assert top_labels(activation, 3).tolist() == [4, 1, 2]
    assert top_labels(activation, 10).tolist() == [4, 1, 2, 0, 3]


def test_noise_images_are_seeded_and_fifteen():
    first, again, other = make_noise_images(32, 0), make_noise_images(32, 0), make_noise_images(32, 1)
    assert len(first) == 3 * len(NOISE_KINDS) == 15
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in first)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=False))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))


def test_beta_larger_than_pool_is_clipped_with_a_warning(world, noise, caplog):
    pool = world.corpus_features[:50]
    with caplog.at_level(logging.WARNING, logger="negspace.detectors.tanl"):
        det = TANL.from_features(world.id_text_features, pool, noise, beta=1000)
    assert det.beta == 50 and det.get_params()["beta"] == 50
    assert "larger than the pool" in caplog.text
    scores = det.score_features(world.far_ood_features[:16])
    assert scores.shape == (16,) and np.all(np.isfinite(scores))


def test_tanl_beats_neglabel_on_far_ood_in_the_stream(world, noise):
    id_set, far = _sets(world)
    _, negatives = world.negatives(1000)
    neglabel = NegLabel.from_features(world.id_text_features, negatives, groups=10)
    base = evaluate_detector(neglabel.score_features, id_set, [far], batch_size=64).results["far"]
    tanl = TANL.from_features(world.id_text_features, world.corpus_features, noise)
    result = evaluate_stream(tanl, id_set, [far], batch_size=64, seed=0).results["far"]
    assert result.auroc > base.auroc + 0.005
    assert result.fpr95 < base.fpr95


def test_queues_and_window_stay_bounded_over_a_long_stream(world, noise):
    det = TANL.from_features(
        world.id_text_features, world.corpus_features, noise, queue_length=30, otsu_window=500, beta=200
    )
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    rng = np.random.default_rng(0)
    shapes = (det.state_.id_queue.data.shape, det.state_.ood_queue.data.shape, det.state_.window.data.shape)
    for _ in range(50):
        det.score_features(stream[rng.choice(len(stream), 32, replace=False)])
        state = det.state_
        assert state.id_queue.count <= 30 and state.ood_queue.count <= 30 and state.window.count <= 500
        assert (state.id_queue.data.shape, state.ood_queue.data.shape, state.window.data.shape) == shapes
    assert state.ood_queue.count == 30 and state.window.count == 500  # they did fill up, then stopped
    assert state.batches == 50


def test_initial_queues_follow_spec(world, noise):
    det = TANL.from_features(world.id_text_features, world.corpus_features, noise, queue_length=300)
    state = det.state_
    assert state.id_queue.count == 20 and state.ood_queue.count == 15  # K ID texts, 15 noise images
    assert state.window.count == 20 + 15
    rows = state.id_queue.rows()
    assert rows.shape == (20, len(world.corpus_features)) and np.all(rows >= 0) and np.all(rows.sum(1) <= 1 + 1e-5)
    small = TANL.from_features(world.id_text_features, world.corpus_features, noise, queue_length=8)
    assert small.state_.id_queue.count == 8 and small.state_.ood_queue.count == 8


def test_same_seed_same_scores_and_reset_restores_state(world, noise):
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    stream = stream[np.random.default_rng(5).permutation(len(stream))][:320]
    batches = [stream[i : i + 64] for i in range(0, len(stream), 64)]

    def run(det):
        return np.concatenate([det.score_features(b) for b in batches])

    first = TANL.from_features(world.id_text_features, world.corpus_features, noise, alpha=0.0)
    initial = copy.deepcopy(first.state_)
    scores = run(first)
    second = TANL.from_features(world.id_text_features, world.corpus_features, noise, alpha=0.0)
    np.testing.assert_array_equal(run(second), scores)
    assert first.state_.batches == 5 and not np.array_equal(first.state_.window.data, initial.window.data)
    first.reset()
    for name in ("id_queue", "ood_queue", "window"):
        a, b = getattr(first.state_, name), getattr(initial, name)
        assert np.array_equal(a.data, b.data) and (a.count, a.head) == (b.count, b.head)
    assert first.state_.batches == 0
    np.testing.assert_array_equal(run(first), scores)


def test_alpha_one_uses_the_queue_ranking_only(world, noise):
    det = TANL.from_features(world.id_text_features, world.corpus_features, noise, alpha=1.0, beta=100)
    batch = world.far_ood_features[:40]
    state = det.state_
    activation = state.ood_queue.mean() - state.id_queue.mean()
    top = top_labels(activation, 100)
    expected = activation_aware_score(batch @ world.id_text_features.T, batch @ world.corpus_features[top].T, 0.01, 1)
    assert_scores_close(det.score_features(batch), expected, dim=world.dim)


class _FakeEncoder:
    """Deterministic unit features per text; records what was asked."""

    dim = 16

    def __init__(self):
        self.templates, self.images = [], 0

    def encode_texts(self, texts, template="{}", progress=False, batch_size=256):
        self.templates.append(template)
        rows = [np.random.default_rng(abs(hash(template.format(t))) % 2**32).standard_normal(self.dim) for t in texts]
        return _unit(np.array(rows).reshape(len(texts), self.dim))

    def encode_images(self, images, batch_size=64):
        self.images += len(images)
        return _unit(np.random.default_rng(9).standard_normal((len(images), self.dim)))


def test_from_encoder_encodes_corpus_and_noise(monkeypatch):
    from negspace.corpus import wordnet

    def fake_corpus(selection="neglabel", exclude=()):
        assert selection == "neglabel"
        nouns = tuple(w for w in ("stone", "cloud", "cat", "river") if w not in exclude)
        return wordnet.Corpus(nouns=nouns, adjectives=("blue", "woolly"))

    monkeypatch.setattr(wordnet, "load_wordnet_corpus", fake_corpus)
    encoder = _FakeEncoder()
    det = TANL.from_encoder(encoder, ["cat", "dog"], beta=3, progress=False)
    assert encoder.images == 15
    assert encoder.templates == ["The nice {}.", "The nice {}.", "This is a {} photo."]
    assert det.pool_labels == ["stone", "cloud", "river", "blue", "woolly"]
    assert det.encoder is encoder and det.beta == 3
    with pytest.raises(ValueError, match="corpus"):
        TANL.from_encoder(encoder, ["cat"], corpus="bogus")


def _literal_tanl_scores(
    id_text, pool, noise, batches, tau=0.01, queue_length=300, alpha=0.0, beta=200, g=0.5, window_length=20000, seed=0
):
    """docs/methods/tanl.md restated slowly: deques of float64 rows, means recomputed from the queues,
    full softmaxes, a stable full sort, one ``logsumexp`` per prefix and a looped Otsu scan."""
    from collections import deque

    from scipy.special import logsumexp, softmax

    id_text, pool, noise = (np.asarray(a, np.float64) for a in (id_text, pool, noise))

    def rows(feats):
        return softmax(np.concatenate([feats @ id_text.T, feats @ pool.T], axis=1) / tau, axis=1)[:, len(id_text) :]

    def score(feats, activation):
        top = np.argsort(-activation, kind="stable")[:beta]
        id_logits, ranked = feats @ id_text.T / tau, feats @ pool[top].T / tau
        id_lse = logsumexp(id_logits, axis=1)
        per_m = [1.0 / (1.0 + np.exp(logsumexp(ranked[:, :m], axis=1) - id_lse)) for m in range(1, beta + 1)]
        return np.mean(per_m, axis=0)

    def otsu(values):
        values = np.asarray(values)
        best, candidates = np.inf, []
        for t in np.arange(100) * 0.01:
            low, high = values[values < t], values[values >= t]
            if len(low) == 0 or len(high) == 0:
                continue
            criterion = (len(low) * low.var() + len(high) * high.var()) / len(values)
            if criterion < best - 1e-12:
                best, candidates = criterion, [t]
            elif abs(criterion - best) <= 1e-12:
                candidates.append(t)
        return candidates[len(candidates) // 2]

    rng = np.random.default_rng(seed)
    id_queue, ood_queue = deque(maxlen=queue_length), deque(maxlen=queue_length)
    id_queue.extend(rows(id_text[rng.permutation(len(id_text))]))
    ood_queue.extend(rows(noise[rng.permutation(len(noise))]))
    window = deque(maxlen=window_length)
    initial = np.mean(ood_queue, axis=0) - np.mean(id_queue, axis=0)
    window.extend(score(id_text, initial))
    window.extend(score(noise, initial))
    out = []
    for batch in batches:
        feats = np.asarray(batch, np.float64)
        mean_id, mean_ood = np.mean(id_queue, axis=0), np.mean(ood_queue, axis=0)
        queue_score = score(feats, mean_ood - mean_id)
        window.extend(queue_score)
        t = otsu(window)
        conf_id, conf_ood = queue_score > t + g * (1 - t), queue_score < t - g * t
        batch_rows = rows(feats)
        batch_id = batch_rows[conf_id].mean(axis=0) if conf_id.any() else mean_id
        batch_ood = batch_rows[conf_ood].mean(axis=0) if conf_ood.any() else mean_ood
        if conf_id.any() or conf_ood.any():
            activation = alpha * (mean_ood - mean_id) + (1 - alpha) * (batch_ood - batch_id)
            out.append(score(feats, activation))
        else:
            out.append(queue_score)
        for index in np.flatnonzero(conf_id | conf_ood):
            (id_queue if conf_id[index] else ood_queue).append(batch_rows[index])
    return out


def test_tanl_matches_a_literal_restatement_batch_by_batch(world, noise):
    """The fast path (running queue sums, one exponential per logit, prefix sums, argpartition)
    gives the literal loop's scores over a stream long enough to wrap the queues many times."""
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    stream = stream[np.random.default_rng(2).permutation(len(stream))]
    batches = [stream[i : i + 48] for i in range(0, 480, 48)]
    params = {"queue_length": 40, "beta": 200, "otsu_window": 300}
    det = TANL.from_features(world.id_text_features, world.corpus_features, noise, **params)
    expected = _literal_tanl_scores(
        world.id_text_features, world.corpus_features, noise, batches, queue_length=40, beta=200, window_length=300
    )
    for batch, want in zip(batches, expected, strict=False):
        assert_scores_close(det.score_features(batch), want, dim=world.dim)
    assert det.state_.ood_queue.count == 40 and det.state_.id_queue.count == 40
