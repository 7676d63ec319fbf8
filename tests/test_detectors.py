"""MCM and NegLabel on the synthetic feature world, and their feature-level API."""

import numpy as np
import pytest

from negspace import testing
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.metrics import auroc, compute_all
from negspace.scoring import max_softmax
from numerics import assert_scores_close

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


@pytest.fixture(scope="module")
def world():
    return testing.make_world(seed=0)


@pytest.fixture(scope="module")
def detectors(world):
    """MCM and NegLabel; their temperatures are in ``TAUS``."""
    _, negatives = world.negatives(1000)
    return {
        "mcm": MCM.from_features(world.id_text_features, temperature=TAUS["mcm"]),
        "neglabel": NegLabel.from_features(world.id_text_features, negatives, tau=TAUS["neglabel"], groups=10, seed=0),
    }


TAUS = {"mcm": 1.0, "neglabel": 0.01}


def test_world_is_reproducible_and_unit_norm():
    a, b = testing.make_world(seed=3, n_corpus=300), testing.make_world(seed=3, n_corpus=300)
    np.testing.assert_array_equal(a.far_ood_features, b.far_ood_features)
    for name in ("id_text_features", "corpus_features", "id_image_features", "far_ood_features", "near_ood_features"):
        np.testing.assert_allclose(np.linalg.norm(getattr(a, name), axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a.id_image_features, testing.make_world(seed=4, n_corpus=300).id_image_features)


def test_world_has_the_promised_geometry(world):
    own = np.sum(world.id_image_features * world.id_text_features[world.id_image_labels], axis=1)
    assert 0.2 < own.mean() < 0.4
    near_parent = world.id_text_features[world.near_concept_parent]
    assert np.all(np.sum(world.near_concept_features * near_parent, axis=1) > 0.7)
    assert np.max(world.far_concept_features @ world.id_text_features.T) < 0.3
    # Mining a world's negatives must reject the planted synonyms of ID classes.
    words, _ = world.negatives(1000)
    assert not any(w.startswith("synonym") for w in words)


def _same_class_and_gap_cosines(world):
    x, labels = world.id_image_features, world.id_image_labels
    cos = x @ x.T
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    return cos[same].mean(), cos[labels[:, None] != labels[None, :]].mean(), (x @ world.far_ood_features.T).mean()


def test_world_image_structure_parameters():
    plain = testing.make_world(seed=1, n_corpus=300)
    # Defaults (0, 0) are the plain world, bit for bit, and the plain world's draws are pinned.
    explicit = testing.make_world(seed=1, n_corpus=300, image_cluster=0.0, modality_gap=0.0)
    for name, value in vars(plain).items():
        np.testing.assert_array_equal(getattr(explicit, name), value)
    np.testing.assert_allclose(
        testing.make_world().id_image_features[:2, :3],
        [[-0.01426394, -0.02545122, 0.02766702], [0.00094587, 0.00082779, 0.01553985]],
        rtol=1e-5,
    )
    base_same, base_other, base_far = _same_class_and_gap_cosines(plain)
    assert base_same < 0.15 and abs(base_other) < 0.03 and abs(base_far) < 0.03

    clustered = testing.make_world(seed=1, n_corpus=300, image_cluster=0.8)
    gapped = testing.make_world(seed=1, n_corpus=300, modality_gap=0.5)
    # Only the images change: texts, corpus, concepts and labels are the plain world's.
    for world in (clustered, gapped):
        for name in (
            "id_text_features",
            "corpus_features",
            "far_concept_features",
            "near_concept_features",
            "id_image_labels",
            "far_ood_concept",
            "near_concept_parent",
        ):
            np.testing.assert_array_equal(getattr(world, name), getattr(plain, name))
        for name in ("id_image_features", "far_ood_features", "near_ood_features"):
            np.testing.assert_allclose(np.linalg.norm(getattr(world, name), axis=1), 1.0, atol=1e-5)
    # image_cluster: images of one class get much closer; other classes and OOD stay apart.
    same, other, far = _same_class_and_gap_cosines(clustered)
    assert same > base_same + 0.25 and abs(other) < 0.03 and abs(far) < 0.03
    # modality_gap: every pair of images gets closer alike, ID-OOD included.
    same, other, far = _same_class_and_gap_cosines(gapped)
    assert other > base_other + 0.15 and far > base_far + 0.15
    assert same - other == pytest.approx(base_same - base_other, abs=0.05)
    # Images keep a CLIP-like cosine (~0.2-0.3) to their own text.
    own = np.sum(clustered.id_image_features * clustered.id_text_features[clustered.id_image_labels], axis=1)
    assert 0.15 < own.mean() < 0.3
    with pytest.raises(ValueError, match="image_cluster"):
        testing.make_world(n_corpus=300, image_cluster=-1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neglabel_beats_mcm_on_far_ood(seed):
    world = testing.make_world(seed=seed)
    _, negatives = world.negatives(1000)
    mcm = MCM.from_features(world.id_text_features)
    neglabel = NegLabel.from_features(world.id_text_features, negatives, groups=10)
    results = {}
    for name, det in (("mcm", mcm), ("neglabel", neglabel)):
        results[name] = compute_all(
            det.score_features(world.id_image_features), det.score_features(world.far_ood_features)
        )
    assert results["neglabel"].auroc > results["mcm"].auroc + 0.03
    assert results["neglabel"].fpr95 < results["mcm"].fpr95 - 0.1


def test_near_ood_is_hard_for_both(world, detectors):
    for det in detectors.values():
        near = auroc(det.score_features(world.id_image_features), det.score_features(world.near_ood_features))
        far = auroc(det.score_features(world.id_image_features), det.score_features(world.far_ood_features))
        assert 0.6 < near < far


def test_mcm_score_is_max_softmax_of_cosines(world):
    feats = world.id_image_features[:10]
    for temperature in (1.0, 0.05):
        det = MCM.from_features(world.id_text_features, temperature=temperature)
        expected = max_softmax(feats @ world.id_text_features.T / temperature)
        assert_scores_close(det.score_features(feats), expected, tau=temperature, dim=world.dim)


def test_scores_are_batch_independent_and_in_unit_interval(world, detectors):
    feats = np.concatenate([world.id_image_features[:50], world.far_ood_features[:50]])
    for name, det in detectors.items():
        whole = det.score_features(feats)
        parts = np.concatenate([det.score_features(feats[:7]), det.score_features(feats[7:])])
        assert_scores_close(parts, whole, tau=TAUS[name], dim=world.dim)  # float32 BLAS blocking
        assert np.all((whole >= 0) & (whole <= 1))


def test_neglabel_seed_controls_grouping(world):
    _, negatives = world.negatives(1000)
    feats = world.far_ood_features[:20]
    a = NegLabel.from_features(world.id_text_features, negatives, groups=10, seed=0).score_features(feats)
    b = NegLabel.from_features(world.id_text_features, negatives, groups=10, seed=0).score_features(feats)
    c = NegLabel.from_features(world.id_text_features, negatives, groups=10, seed=1).score_features(feats)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_one_group_equals_plain_softmax_mass(world):
    _, negatives = world.negatives(200)
    det = NegLabel.from_features(world.id_text_features, negatives, groups=1)
    feats = world.id_image_features[:5].astype(np.float64)
    logits = np.exp(np.concatenate([feats @ world.id_text_features.T, feats @ negatives.T], 1) / 0.01)
    expected = logits[:, : len(world.id_text_features)].sum(1) / logits.sum(1)
    assert_scores_close(det.score_features(feats), expected, dim=world.dim)


def test_unnormalised_input_is_normalised(world, detectors):
    feats = world.id_image_features[:5]
    for name, det in detectors.items():
        assert_scores_close(det.score_features(3.5 * feats), det.score_features(feats), tau=TAUS[name], dim=world.dim)


def test_bad_inputs_give_clear_errors(world):
    with pytest.raises(ValueError, match="dimension"):
        MCM.from_features(world.id_text_features).score_features(np.ones((2, 7)))
    with pytest.raises(ValueError, match="NaN"):
        MCM.from_features(world.id_text_features).score_features(np.full((1, world.dim), np.nan))
    with pytest.raises(ValueError, match="groups"):
        NegLabel.from_features(world.id_text_features, world.corpus_features[:50], groups=100)
    with pytest.raises(ValueError, match="temperature"):
        MCM.from_features(world.id_text_features, temperature=0)
    with pytest.raises(RuntimeError, match="score_features"):
        MCM.from_features(world.id_text_features).score_images([])


def test_repr_shows_sizes_and_the_parameters_that_differ_from_the_defaults(world, detectors):
    assert repr(detectors["neglabel"]).startswith("NegLabel(n_classes=20, n_negatives=1000, ")
    assert "groups=10" in repr(detectors["neglabel"]) and "tau=" not in repr(detectors["neglabel"])
    assert repr(detectors["mcm"]) == "MCM(n_classes=20)"  # temperature 1.0 is the paper's
    assert repr(MCM.from_features(world.id_text_features, temperature=0.5)) == "MCM(n_classes=20, temperature=0.5)"
