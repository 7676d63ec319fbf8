"""`negspace score`'s rows from one product per batch: each detector's ``score_with_nearest`` gives
exactly its scores and the nearest ID class and negative label that ``nearest_labels`` finds."""

from __future__ import annotations

import numpy as np
import pytest

from negspace.detectors.csp import CSP
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.negrefine import NegRefine
from negspace.testing import make_world


@pytest.fixture(scope="module")
def world():
    return make_world(dim=48, n_classes=15, n_corpus=800, seed=4)


def _detectors(world, **on):
    labels = [f"neg{j}" for j in range(637)]  # 637: 37 labels outside NegLabel's groups
    bank = world.corpus_features[:637]
    names = [f"class{i}" for i in range(len(world.id_text_features))]

    def pairs(texts):
        rng = np.random.default_rng(len(texts))
        rows = rng.standard_normal((len(texts), world.dim))
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    return {
        "mcm": MCM.from_features(world.id_text_features, **on),
        "neglabel": NegLabel(world.id_text_features, bank, groups=100, neg_labels=labels, **on),
        "csp": CSP(world.id_text_features, bank, groups=100, neg_labels=labels, **on),
        "negrefine": NegRefine.from_features(world.id_text_features, bank, groups=100, class_names=names,
                                             neg_labels=labels, pair_encoder=pairs, **on),
    }


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_one_product_gives_the_scores_and_the_nearest_labels(world, backend):
    on = {} if backend == "numpy" else {"backend": "torch", "device": "cpu"}
    images = np.concatenate([world.id_image_features[:40], world.far_ood_features[:40], world.near_ood_features[:40]])
    for name, detector in _detectors(world, **on).items():
        scores, nearest_id, nearest_negative = detector.score_with_nearest(images)
        np.testing.assert_array_equal(scores, detector.score_features(images), err_msg=name)
        want_id, want_negative = detector.nearest_labels(images)
        np.testing.assert_array_equal(nearest_id, want_id, err_msg=name)
        assert nearest_negative == want_negative, name
    # the tail outside the groups is searched too: an image equal to a tail label finds it
    neglabel = _detectors(world)["neglabel"]
    tail_image = world.corpus_features[636:637]
    assert neglabel.score_with_nearest(tail_image)[2] == ["neg636"]
