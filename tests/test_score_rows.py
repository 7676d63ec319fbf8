"""`negspace score`'s rows from one product per batch: each detector's ``score_with_nearest`` gives
exactly its scores and the nearest ID class and negative label that ``nearest_labels`` finds (for
TANL: the nearest of the activated labels its score used)."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot_world import prototypes_of, rotating_inverter
from negspace.backend import to_numpy
from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.ants import ANTS
from negspace.detectors.csp import CSP
from negspace.detectors.interneg import InterNeg
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.negrefine import NegRefine
from negspace.detectors.tanl import TANL
from negspace.detectors.tins import TINS
from negspace.testing import WorldMLLM, WorldTextEncoder, make_world, world_stream


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
        "negrefine": NegRefine.from_features(
            world.id_text_features, bank, groups=100, class_names=names, neg_labels=labels, pair_encoder=pairs, **on
        ),
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


def _learned(world, **on):
    """The test-time detectors after learning on a stream, frozen: what `negspace score` loads."""
    labels = [f"neg{j}" for j in range(637)]
    bank = world.corpus_features[:637]
    noise = np.random.default_rng(2).standard_normal((15, world.dim)).astype(np.float32)
    inverter = rotating_inverter(world, seed=11, strength=0.3)
    prototypes = prototypes_of(world)
    detectors = {
        "tanl": TANL.from_features(
            world.id_text_features,
            world.corpus_features,
            noise,
            queue_length=25,
            beta=120,
            otsu_window=150,
            pool_labels=[f"word{j}" for j in range(len(world.corpus_features))],
            **on,
        ),
        "adaneg": AdaNeg.from_features(world.id_text_features, bank, memory_length=4, neg_labels=labels, **on),
        "ants": ANTS.from_features(
            world.id_text_features,
            bank,
            WorldTextEncoder(world),
            WorldMLLM(world),
            world.class_names,
            neg_labels=labels,
            min_candidates=20,
            vsnl_start=1,
            vsnl_every=2,
            groups=10,
            delta=0.25,
            **on,
        ),
        "interneg": InterNeg.from_features(
            world.id_text_features, bank, prototypes, beta=0.6, learned=40, neg_labels=labels, inverter=inverter
        ),
        "tins": TINS.from_features(
            world.id_text_features, bank, prototypes, beta=0.6, learned=40, neg_labels=labels, inverter=inverter
        ),
    }
    batches, _ = world_stream(world, "mixed", seed=3, batch_size=50)
    for detector in detectors.values():
        detector.score_stream(batches)
        detector.freeze()
    return detectors


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_test_time_detectors_rows_come_from_their_scores_products(world, backend):
    on = {} if backend == "numpy" else {"backend": "torch", "device": "cpu"}
    images = np.concatenate([world.id_image_features[:40], world.far_ood_features[:40], world.near_ood_features[:40]])
    detectors = _learned(world, **on)
    ants = detectors["ants"]
    assert ants.state.ens_count > 0 and len(ants.state.vsnl_texts) > 0  # its banks are searched too
    for name in ("interneg", "tins"):  # learned rows are named in the rows
        assert len(detectors[name].negative_bank()[1]) > 637
    for name, detector in detectors.items():
        scores, nearest_id, nearest_negative = detector.score_with_nearest(images)
        np.testing.assert_array_equal(scores, detector.score_features(images), err_msg=name)
        want_id, want_negative = detector.nearest_labels(images)
        np.testing.assert_array_equal(nearest_id, want_id, err_msg=name)
        if name == "tanl":  # the nearest of the beta labels its queues activate, not of the whole pool
            state = detector.state_
            activation = np.asarray(to_numpy(state.ood_queue.mean() - state.id_queue.mean()))
            top = np.argsort(-activation, kind="stable")[: detector.beta]
            assert sorted(detector.negative_bank()[1]) == sorted(detector.pool_labels[j] for j in top)
            assert nearest_negative == [
                detector.pool_labels[top[j]] for j in (images @ detector.pool_text_features[top].T).argmax(1)
            ]
        assert nearest_negative == want_negative, name
    # a learned (pseudo-token) row is named: an image equal to one finds it
    for name, learned in (("interneg", detectors["interneg"].learned_features), ("tins", detectors["tins"].bank)):
        bank, labels = detectors[name].negative_bank()
        row = next(j for j in range(637, len(bank)) if np.allclose(bank[j], learned[0]))
        assert (
            detectors[name].score_with_nearest(learned[:1])[2] == [labels[row]] == [f"(learned negative {row - 636})"]
        )


def test_an_empty_batch_gives_empty_rows(world):
    empty = np.zeros((0, world.dim), dtype=np.float32)
    for name, detector in {**_detectors(world), **_learned(world)}.items():
        scores, nearest_id, nearest_negative = detector.score_with_nearest(empty)
        assert (len(scores), len(nearest_id), len(nearest_negative)) == (0, 0, 0), name
