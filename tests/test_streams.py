"""The three stream protocols of ``evaluate_stream`` (docs/methods/evaluation.md) with ANTS on a
synthetic world."""

from __future__ import annotations

import numpy as np
import pytest

from negspace.evaluation import EncodedSet, evaluate_stream
from negspace.testing import make_world
from reference_metrics import assert_metrics
from test_ants import build

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


@pytest.fixture(scope="module")
def world():
    return make_world(n_per_class=20, n_per_concept=60)


def sets(world):
    def encoded(name, features):
        return EncodedSet(name, features, [f"{name}/0_{i}.png" for i in range(len(features))])

    return encoded("id", world.id_image_features), [
        encoded("near", world.near_ood_features),
        encoded("far", world.far_ood_features),
    ]


def test_sequential_carries_the_state_and_its_first_segment_is_the_per_set_stream(world):
    id_set, ood_sets = sets(world)
    corpus = world.negatives(1000)
    per_set = evaluate_stream(build(world, corpus, mode="vsnl"), id_set, ood_sets, batch_size=50, seed=2)
    learned = []
    sequential = evaluate_stream(
        build(world, corpus, mode="vsnl"),
        id_set,
        ood_sets,
        batch_size=50,
        seed=2,
        mode="sequential",
        after_stream=lambda name, det, s, scores: learned.append(set(det.state.vsnl_answers)),
    )
    np.testing.assert_array_equal(per_set.ood_scores["near"], sequential.ood_scores["near"])
    np.testing.assert_array_equal(per_set.stream_id_scores["near"], sequential.stream_id_scores["near"])
    assert learned[0] <= learned[1]  # no reset: answers learned on near are still there after far
    assert not np.array_equal(per_set.ood_scores["far"], sequential.ood_scores["far"])
    assert sequential.info["stream"] == {
        "mode": "sequential",
        "seed": 2,
        "batch_size": 50,
        "reset_between_ood_sets": False,
        "order": ["near", "far"],
    }
    # the whole stream pools both segments' ID and OOD scores (metrics computed apart from negspace's)
    assert_metrics(
        sequential.whole,
        np.concatenate([sequential.stream_id_scores["near"], sequential.stream_id_scores["far"]]),
        np.concatenate([sequential.ood_scores["near"], sequential.ood_scores["far"]]),
    )


def test_mixed_is_one_stream_with_metrics_per_set_and_whole(world):
    id_set, ood_sets = sets(world)
    seen = []
    evaluation = evaluate_stream(
        build(world, world.negatives(1000)),
        id_set,
        ood_sets,
        batch_size=50,
        seed=1,
        mode="mixed",
        after_stream=lambda name, det, s, scores: seen.append((name, len(scores))),
    )
    n_ood = len(world.near_ood_features) + len(world.far_ood_features)
    assert seen == [("mixed", len(world.id_image_features) + n_ood)]
    np.testing.assert_array_equal(evaluation.stream_id_scores["near"], evaluation.stream_id_scores["far"])
    assert evaluation.stream_of == {"near": "mixed", "far": "mixed"}
    assert_metrics(evaluation.results["far"], evaluation.id_scores, evaluation.ood_scores["far"])
    assert evaluation.whole.n_ood == n_ood and evaluation.whole.n_id == len(world.id_image_features)


def test_per_set_whole_pools_every_stream(world):
    id_set, ood_sets = sets(world)
    evaluation = evaluate_stream(build(world, world.negatives(1000)), id_set, ood_sets, batch_size=50)
    assert evaluation.whole.n_id == 2 * len(world.id_image_features)
    with pytest.raises(ValueError, match="stream mode"):
        evaluate_stream(build(world, world.negatives(1000)), id_set, ood_sets, mode="shuffled")
