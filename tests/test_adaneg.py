"""AdaNeg (docs/methods/adaneg.md): memories, replacement rule, proxies, stream behaviour."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from negspace.detectors.adaneg import (
    AdaNeg,
    sample_adaptive_cosines,
    softmax_entropy,
    task_proxies,
    write_to_memory,
)
from negspace.detectors.neglabel import NegLabel
from negspace.evaluation import EncodedSet, evaluate_detector, evaluate_stream
from negspace.scoring import grouped_id_mass
from negspace.testing import make_world
from numerics import assert_scores_close, cosine_error

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


WORLD = {"n_corpus": 3000, "n_classes": 20, "n_per_class": 25, "n_per_concept": 100, "seed": 0}


@pytest.fixture(scope="module")
def world():
    return make_world(**WORLD)


@pytest.fixture(scope="module")
def clip_world():
    """The same world (same texts, corpus, concepts) with CLIP's image-side structure.

    AdaNeg's premise (test images are better proxies than texts) needs images of one class to be
    closer to each other than to their text, and a modality gap shared by all images; the plain
    world has neither (image-image cosine ~0.1) and there AdaNeg does not beat NegLabel. See
    ``image_cluster`` and ``modality_gap`` of :func:`negspace.testing.make_world`.
    """
    return make_world(**WORLD, image_cluster=0.8, modality_gap=0.5)


@pytest.fixture(scope="module")
def negatives(world):
    return world.negatives(1000)[1]


def _empty_memory(n_labels=3, slots=4, dim=3):
    memory = np.zeros((n_labels, slots, dim), dtype=np.float32)
    memory[:, 0] = np.eye(n_labels, dim)
    return memory, np.ones(n_labels, dtype=np.int64), np.zeros((n_labels, slots))


def _sequential_reference(memory, filled, entropy, labels, entropies, features):
    """The rule written one sample at a time, as docs/methods/adaneg.md states it."""
    for label, ent, feat in zip(labels, entropies, features, strict=False):
        if filled[label] < memory.shape[1]:
            memory[label, filled[label]] = feat
            entropy[label, filled[label]] = ent
            filled[label] += 1
        elif memory.shape[1] > 1:
            worst = 1 + int(np.argmax(entropy[label, 1:]))
            if ent < entropy[label, worst]:
                memory[label, worst] = feat
                entropy[label, worst] = ent


def test_replacement_rule_on_a_hand_made_case():
    memory, filled, entropy = _empty_memory(n_labels=2, slots=3)
    f = np.arange(1, 7, dtype=np.float32)[:, None] * np.ones((6, 3), dtype=np.float32)
    # label 1 gets: 0.5, 0.9 (fills the 2 free slots), 0.7 (replaces 0.9), 1.0 (too high, ignored),
    # 0.2 (replaces 0.7, now the highest); label 0 gets one sample.
    labels = np.array([1, 1, 0, 1, 1, 1])
    ents = np.array([0.5, 0.9, 0.3, 0.7, 1.0, 0.2])
    touched = write_to_memory(memory, filled, entropy, labels, ents, f)
    assert touched.tolist() == [0, 1]
    assert filled.tolist() == [2, 3]
    np.testing.assert_array_equal(entropy[1], [0.0, 0.5, 0.2])
    np.testing.assert_array_equal(memory[1, 1:, 0], [1.0, 6.0])  # slot 1: first sample, slot 2: last
    np.testing.assert_array_equal(memory[1, 0], [0.0, 1.0, 0.0])  # slot 0: the text feature
    np.testing.assert_array_equal(memory[0, 1, 0], 3.0)


def test_slot_zero_is_never_replaced():
    memory, filled, entropy = _empty_memory(n_labels=1, slots=3)
    text = memory[0, 0].copy()
    rng = np.random.default_rng(0)
    for _ in range(20):
        write_to_memory(memory, filled, entropy, np.zeros(5, int), rng.uniform(0, 2, 5) * 0, rng.random((5, 3)))
        write_to_memory(memory, filled, entropy, np.zeros(5, int), rng.uniform(0, 2, 5), rng.random((5, 3)))
    np.testing.assert_array_equal(memory[0, 0], text)
    assert entropy[0, 0] == 0.0 and filled[0] == 3
    # a memory of one slot (text only) never stores anything
    one, one_filled, one_entropy = _empty_memory(n_labels=1, slots=1)
    assert write_to_memory(one, one_filled, one_entropy, np.array([0]), np.array([0.0]), np.ones((1, 3))).size == 0
    np.testing.assert_array_equal(one[0, 0], [1, 0, 0])


def test_vectorised_rounds_equal_the_sequential_rule():
    rng = np.random.default_rng(1)
    memory, filled, entropy = _empty_memory(n_labels=5, slots=4, dim=5)
    ref = [memory.copy(), filled.copy(), entropy.copy()]
    for _ in range(30):
        n = rng.integers(0, 12)
        labels, ents, feats = rng.integers(0, 5, n), rng.random(n).round(1), rng.random((n, 5)).astype(np.float32)
        write_to_memory(memory, filled, entropy, labels, ents, feats)
        _sequential_reference(*ref, labels, ents, feats)
        np.testing.assert_array_equal(memory, ref[0])
        np.testing.assert_array_equal(filled, ref[1])
        np.testing.assert_array_equal(entropy, ref[2])


def test_entropy_and_proxies():
    logits = np.array([[0.0, 0.0], [100.0, -100.0], [1e4, 0.0]])
    np.testing.assert_allclose(softmax_entropy(logits), [np.log(2), 0.0, 0.0], atol=1e-12)
    memory, filled, _ = _empty_memory(n_labels=2, slots=3)
    memory[0, 1] = [0.0, 1.0, 0.0]
    memory[0, 2] = [5.0, 5.0, 5.0]  # not filled: ignored
    filled[0] = 2
    np.testing.assert_allclose(task_proxies(memory, filled), [[2**-0.5, 2**-0.5, 0], [0, 1, 0]], atol=1e-7)


def test_sample_adaptive_cosines_match_explicit_proxies():
    rng = np.random.default_rng(2)
    n, slots, dim = 4, 3, 6
    memory = _unit(rng.standard_normal((n, slots, dim)))
    filled = np.array([1, 2, 3, 3])
    gram = np.einsum("nsd,ntd->nst", memory, memory)
    v = _unit(rng.standard_normal((5, dim)))
    got = sample_adaptive_cosines(v, memory, filled, gram, scale=5.5)
    for b in range(5):
        for label in range(n):
            m = memory[label, : filled[label]].astype(np.float64)
            w = np.exp(-5.5 * (1 - m @ v[b]))
            proxy = w @ m
            proxy /= np.linalg.norm(proxy)
            # a ratio of float32 dot products (weights, Gram, cosines): a few cosine errors
            assert got[b, label] == pytest.approx(float(proxy @ v[b]), abs=4 * cosine_error(dim))


def test_before_any_caching_the_score_is_neglabel_plus_a_tenth(world, negatives):
    middle = AdaNeg.from_features(world.id_text_features, negatives, g=1.0)  # thresholds 1 and 0: no caching
    batch = world.id_image_features[:50]
    s_nl = middle.neglabel_score(batch)
    assert_scores_close(middle.score_features(batch), 1.1 * s_nl, dim=world.dim, weight=1.1)
    assert middle.state_.cached == 0
    reference = NegLabel.from_features(world.id_text_features, negatives, groups=5).score_features(batch)
    assert_scores_close(s_nl, reference, dim=world.dim)


def test_caching_happens_before_scoring(world, negatives):
    det = AdaNeg.from_features(world.id_text_features, negatives)
    batch = world.id_image_features[:8]
    scores = det.score_features(batch)
    state = det.state_
    assert state.cached > 0
    id_cos = batch @ state.proxies[: len(world.class_names)].T
    neg_cos = batch @ state.proxies[len(world.class_names) + det.group_index_].T
    expected = grouped_id_mass(id_cos, neg_cos, 5, 0.01) + 0.1 * det.neglabel_score(batch)
    assert_scores_close(scores, expected, dim=world.dim, weight=1.1)


@pytest.mark.parametrize("proxy", ["task", "sample"])
def test_adaneg_beats_neglabel_on_far_ood_in_the_stream(clip_world, negatives, proxy):
    world = clip_world  # same texts and negatives as `world`
    id_set = EncodedSet("id", world.id_image_features, [f"i{i}" for i in range(len(world.id_image_features))])
    far = EncodedSet("far", world.far_ood_features, [f"f{i}" for i in range(len(world.far_ood_features))])
    neglabel = NegLabel.from_features(world.id_text_features, negatives, groups=10)
    base = evaluate_detector(neglabel.score_features, id_set, [far], batch_size=64).results["far"]
    det = AdaNeg.from_features(world.id_text_features, negatives, proxy=proxy)
    result = evaluate_stream(det, id_set, [far], batch_size=64, seed=0).results["far"]
    assert result.auroc > base.auroc + 0.03
    assert result.fpr95 < base.fpr95


def test_memories_stay_bounded_over_a_long_stream(clip_world, negatives):
    world = clip_world
    det = AdaNeg.from_features(world.id_text_features, negatives, memory_length=4)
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    rng = np.random.default_rng(0)
    shape = det.state_.memory.shape
    text = det.state_.memory[:, 0].copy()
    for _ in range(50):
        det.score_features(stream[rng.choice(len(stream), 32, replace=False)])
        assert det.state_.memory.shape == shape and det.state_.filled.max() <= 4
    assert det.state_.filled.max() == 4  # memories did fill up
    np.testing.assert_array_equal(det.state_.memory[:, 0], text)


@pytest.mark.parametrize("proxy", ["task", "sample"])
def test_same_seed_same_scores_and_reset_restores_state(clip_world, negatives, proxy):
    world = clip_world
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    stream = stream[np.random.default_rng(5).permutation(len(stream))][:256]
    batches = [stream[i : i + 64] for i in range(0, len(stream), 64)]

    def run(det):
        return np.concatenate([det.score_features(b) for b in batches])

    first = AdaNeg.from_features(world.id_text_features, negatives, proxy=proxy)
    initial = copy.deepcopy(first.state_)
    scores = run(first)
    np.testing.assert_array_equal(run(AdaNeg.from_features(world.id_text_features, negatives, proxy=proxy)), scores)
    first.reset()
    for name in ("memory", "filled", "entropy", "proxies", "gram"):
        np.testing.assert_array_equal(getattr(first.state_, name), getattr(initial, name))
    assert first.state_.batches == 0 and first.state_.cached == 0
    np.testing.assert_array_equal(run(first), scores)


def test_bad_parameters_are_clear_errors(world, negatives):
    with pytest.raises(ValueError, match="proxy"):
        AdaNeg.from_features(world.id_text_features, negatives, proxy="bogus")
    with pytest.raises(ValueError, match="groups"):
        AdaNeg.from_features(world.id_text_features, negatives[:3], groups=5)


def test_from_encoder_reuses_mined_negatives():
    from negspace.corpus.mining import MinedNegatives

    class Encoder:
        dim = 8

        def __init__(self):
            self.calls = []

        def encode_texts(self, texts, template="{}", progress=False, batch_size=256):
            self.calls.append((list(texts), template))
            return _unit(np.random.default_rng(len(texts)).standard_normal((len(texts), self.dim)))

    encoder = Encoder()
    mined = MinedNegatives(["stone", "cloud", "blue"], _unit(np.random.default_rng(3).standard_normal((3, 8))), 2, 1)
    det = AdaNeg.from_encoder(encoder, ["cat", "dog"], mined=mined, groups=1, progress=False)
    assert encoder.calls == [(["cat", "dog"], "The nice {}.")]
    assert det.neg_labels == ["stone", "cloud", "blue"] and det.encoder is encoder
    np.testing.assert_allclose(det.neg_text_features, mined.features, rtol=1e-6)
