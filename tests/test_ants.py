"""ANTS in the synthetic world, with a scripted MLLM and a text encoder that knows the world."""

from __future__ import annotations

import logging
import re
import threading

import numpy as np
import pytest

from negspace.detectors.ants import ANTS
from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.rules import (
    exact_paper_negatives,
    histogram_add,
    histogram_quantile,
    histogram_threshold,
    kcenter_greedy,
    scaled_schedule,
)
from negspace.detectors.ants.state import ANTSState
from negspace.detectors.neglabel import NegLabel
from negspace.metrics import auroc
from negspace.mllm.protocol import MLLM
from negspace.testing import WorldMLLM as ScriptedMLLM
from negspace.testing import WorldTextEncoder as StubEncoder
from negspace.testing import make_world, world_stream
from numerics import assert_same_ranking, assert_scores_close

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)

# K = 20 here: delta = 0.25 keeps 5 similar classes (0.08 would keep 2 of the 4 near parents)
SCHEDULE = {"min_candidates": 20, "vsnl_start": 1, "vsnl_every": 2, "groups": 10, "delta": 0.25}
BATCH = 50


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def corpus(world):
    return world.negatives(1000)


def build(world, corpus, mllm=None, **kw):
    labels, features = corpus
    options = {**SCHEDULE, **kw}
    return ANTS.from_features(
        world.id_text_features,
        features,
        StubEncoder(world),
        mllm if mllm is not None else ScriptedMLLM(world),
        world.class_names,
        neg_labels=labels,
        **options,
    )


def stream(world, kind: str, seed: int = 0, batch: int = BATCH):
    """``(batches, order)``: ID images then OOD images of ``kind``, shuffled with ``seed``."""
    return world_stream(world, kind, seed, batch)


def run(det, world, kind, seed=0, batch=BATCH):
    batches, order = stream(world, kind, seed, batch)
    scores = np.empty(len(order))
    scores[order] = np.concatenate(det.score_stream(batches))
    n_id = len(world.id_image_features)
    return scores[:n_id], scores[n_id:]


def neglabel_stream(world, corpus, kind, seed=0):
    """NegLabel on the same batches (float32 matmuls depend slightly on the batch's rows)."""
    det = NegLabel.from_features(world.id_text_features, corpus[1], groups=10)
    batches, order = stream(world, kind, seed)
    scores = np.empty(len(order))
    scores[order] = np.concatenate([det.score_features(b.features) for b in batches])
    n_id = len(world.id_image_features)
    return scores[:n_id], scores[n_id:]


def neglabel_auroc(world, corpus, kind):
    det = NegLabel.from_features(world.id_text_features, corpus[1], groups=10)
    ood = world.far_ood_features if kind == "far" else world.near_ood_features
    return auroc(det.score_features(world.id_image_features), det.score_features(ood))


# -- the method works ------------------------------------------------------------------------------


def test_ens_improves_far_ood_over_neglabel(world, corpus):
    base = neglabel_auroc(world, corpus, "far")
    for mode in ("ens", "ada"):
        det = build(world, corpus, mode=mode)
        id_s, ood_s = run(det, world, "far")
        assert det.state.ens_count > 0
        assert set(world.far_concepts) <= {t.rstrip(".") for t in det.state.ens_texts}
        assert auroc(id_s, ood_s) > base + 0.01, (mode, auroc(id_s, ood_s), base)


def test_vsnl_improves_near_ood_over_neglabel(world, corpus):
    base = neglabel_auroc(world, corpus, "near")
    det = build(world, corpus, mode="vsnl")
    id_s, ood_s = run(det, world, "near")
    assert set(world.near_concepts) <= set(det.state.vsnl_texts)
    assert not {t.casefold().rstrip("s") for t in det.state.vsnl_texts} & set(world.class_names)
    assert auroc(id_s, ood_s) > base + 0.01, (auroc(id_s, ood_s), base)


def test_lam_rises_on_far_and_falls_on_near(world, corpus):
    far = build(world, corpus)
    run(far, world, "far")
    near = build(world, corpus)
    run(near, world, "near")
    assert far.lam > 0.5 > near.lam, (far.lam, near.lam)
    assert 0.0 <= near.lam <= far.lam <= 1.0


def test_two_pass_lam_and_quality(world, corpus):
    far = build(world, corpus, two_pass=True)
    id_s, ood_s = run(far, world, "far")
    near = build(world, corpus, two_pass=True)
    run(near, world, "near")
    assert far.lam > 0.5 > near.lam
    assert auroc(id_s, ood_s) > neglabel_auroc(world, corpus, "far") + 0.01


def test_no_negatives_gives_neglabel_scores(world, corpus):
    mllm = ScriptedMLLM(world)
    det = build(world, corpus, mllm=mllm, gamma0=1e-12)
    id_s, ood_s = run(det, world, "far")
    ref_id, ref_ood = neglabel_stream(world, corpus, "far")
    # NegLabel's own detector computes the same function with its own products
    assert_scores_close(id_s, ref_id, dim=world.dim)
    assert_scores_close(ood_s, ref_ood, dim=world.dim)
    assert det.lam == 0.5 and mllm.received == 0
    assert det.state.negatives_mined == 0


def test_fixed_lam_and_neglabel_mode(world, corpus):
    det = build(world, corpus, lam=1.0)
    run(det, world, "far")
    assert det.lam == 1.0
    nl = build(world, corpus, mode="neglabel")
    id_s, _ = run(nl, world, "far")
    assert_scores_close(id_s, neglabel_stream(world, corpus, "far")[0], dim=world.dim)
    assert nl.mllm_calls == 0


# -- determinism and order ---------------------------------------------------------------------------


def test_two_pass_identical_under_any_permutation(world, corpus):
    results = []
    for seed, batch in ((0, 50), (1, 50), (2, 37), (3, 256)):
        det = build(world, corpus, two_pass=True, diversity="kcenter", diversity_size=7)
        results.append(np.concatenate(run(det, world, "far", seed=seed, batch=batch)))
        texts = det.state.ens_texts
        if seed == 0:
            first_texts = texts
        assert texts == first_texts
    for other in results[1:]:
        # the same banks; other batch shapes block the float32 products differently
        assert_scores_close(other, results[0], dim=world.dim)
        assert_same_ranking(other, results[0], dim=world.dim)


def test_online_identical_for_same_seed(world, corpus):
    a = np.concatenate(run(build(world, corpus), world, "far", seed=5))
    b = np.concatenate(run(build(world, corpus), world, "far", seed=5))
    np.testing.assert_array_equal(a, b)


def test_reset_restores_initial_state(world, corpus):
    det = build(world, corpus)
    first = np.concatenate(run(det, world, "near"))
    det.reset()
    assert det.state.ens_count == 0 and det.state.negatives_mined == 0
    np.testing.assert_array_equal(first, np.concatenate(run(det, world, "near")))


# -- MLLM budget and failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("two_pass", [False, True])
def test_mllm_budget_never_exceeded(world, corpus, two_pass, caplog):
    mllm = ScriptedMLLM(world)
    det = build(world, corpus, mllm=mllm, max_mllm_calls=7, mllm_batch_size=3, two_pass=two_pass)
    with caplog.at_level(logging.WARNING, logger="negspace.detectors.ants"):
        id_s, ood_s = run(det, world, "far")
    assert mllm.received <= 7 and det.mllm_calls == mllm.received
    assert det.state.budget_exhausted
    assert sum("budget" in r.message for r in caplog.records) == 1
    assert np.all(np.isfinite(id_s)) and np.all(np.isfinite(ood_s))
    assert mllm.generate_calls >= 3  # batched in threes


def test_requests_are_batched(world, corpus):
    mllm = ScriptedMLLM(world)
    det = build(world, corpus, mllm=mllm, mllm_batch_size=64)
    run(det, world, "far")
    assert mllm.received > mllm.generate_calls  # several requests per generate call
    assert det.run_info()["mllm_requests"] == mllm.received


@pytest.mark.parametrize("behaviour", ["none", "garbage", "raise"])
@pytest.mark.parametrize("two_pass", [False, True])
def test_failing_mllm_leaves_ants_working(world, corpus, behaviour, two_pass):
    mllm = ScriptedMLLM(world, behaviour)
    det = build(world, corpus, mllm=mllm, two_pass=two_pass)
    id_s, ood_s = run(det, world, "far")
    assert np.all(np.isfinite(id_s)) and np.all(np.isfinite(ood_s))
    assert det.state.ens_count == 0 and len(det.state.vsnl_texts) == 0
    assert 0.0 <= det.lam <= 1.0
    if behaviour == "garbage":
        assert det.state.rejected_answers > 0 and mllm.stats.rejected_answers == det.state.rejected_answers
    else:
        assert det.state.failed_answers > 0


def test_no_mllm_and_no_images_do_not_crash(world, corpus):
    det = ANTS.from_features(world.id_text_features, corpus[1], StubEncoder(world), None, world.class_names, **SCHEDULE)
    run(det, world, "far")
    det2 = build(world, corpus)
    for s in range(0, 300, 50):
        det2.score_features(world.far_ood_features[s : s + 50])  # no images
    assert det2.state.ens_count == 0


# -- bounded state, diversity ------------------------------------------------------------------------------


def test_state_is_bounded(world, corpus):
    det = build(world, corpus, ens_size=3, mode="ens")
    batches, _ = stream(world, "far")
    for batch in batches:
        det.score_features(batch.features, images=batch.images)
        assert det.state.ens_count <= 3
        assert det.state.pending_count < det.config.min_candidates + BATCH
        assert len(det.state.vsnl_answers) <= len(world.class_names)
    assert len(det.state.ens_features) == 3
    assert det.state.score_hist.shape == (det.config.histogram_bins,)


def test_ens_keeps_newest_in_either_order():
    eye = np.eye(2, dtype=np.float32)
    for prepend, expected in ((False, ["s2", "s3", "s4"]), (True, ["s4", "s3", "s2"])):
        st = ANTSState.fresh(ANTSConfig(ens_size=3), dim=2, n_classes=1)
        for i in range(5):
            st.add_ens([f"s{i}"], eye[i % 2][None], np.zeros(1), prepend=prepend)
        assert st.ens_texts == expected
        assert st.ens_bank.shape == (3, 2) and st.ens_version == 5
    st = ANTSState.fresh(ANTSConfig(ens_size=3), dim=2, n_classes=1)
    st.add_ens(["a", "b", "c", "d"], np.repeat(eye[:1], 4, 0), np.zeros(4), prepend=False)
    assert st.ens_texts == ["b", "c", "d"]
    st.add_ens(["e", "f"], np.repeat(eye[1:], 2, 0), np.zeros(2), prepend=True)  # new first, oldest dropped
    assert st.ens_texts == ["e", "f", "b"]


def test_diversity_selection_makes_fewer_calls(world, corpus):
    full, spread = ScriptedMLLM(world), ScriptedMLLM(world)
    a = build(world, corpus, mllm=full, mode="ens")
    b = build(world, corpus, mllm=spread, mode="ens", diversity="kcenter", diversity_size=5)
    _, _ood_a = run(a, world, "far")
    id_b, ood_b = run(b, world, "far")
    assert spread.received < full.received / 2
    assert set(world.far_concepts) <= {t.rstrip(".") for t in b.state.ens_texts}
    assert auroc(id_b, ood_b) > neglabel_auroc(world, corpus, "far")


def test_histogram_threshold_and_history_rule_run(world, corpus):
    det = build(world, corpus, threshold="histogram", similar_classes="history_top40")
    id_s, _ood_s = run(det, world, "far")
    assert det.state.threshold != 0.8 and det.state.ens_count > 0
    assert np.all(np.isfinite(id_s))


# -- persistence and explanations ------------------------------------------------------------------------------


def test_save_load_gives_identical_scores(world, corpus, tmp_path):
    det = build(world, corpus)
    batches, _ = stream(world, "far")
    for batch in batches[:12]:
        det.score_features(batch.features, images=batch.images)
    det.save(tmp_path / "space")
    # a loaded space with the same MLLM continues exactly like the original ...
    cont = ANTS.load(tmp_path / "space", text_encoder=StubEncoder(world), mllm=ScriptedMLLM(world))
    for batch in batches[12:]:
        np.testing.assert_array_equal(
            det.score_features(batch.features, images=batch.images),
            cont.score_features(batch.features, images=batch.images),
        )
    # ... and a frozen one (no MLLM, no encoder) scores another stream like the frozen original
    det.freeze()
    det.save(tmp_path / "final")
    loaded = ANTS.load(tmp_path / "final")
    assert loaded.frozen and loaded.state.ens_texts == det.state.ens_texts
    near, _ = stream(world, "near")
    for batch in near:
        np.testing.assert_array_equal(det.score_features(batch.features), loaded.score_features(batch.features))
    assert (loaded.space_mllm_calls, loaded.mllm_calls) == (det.mllm_calls, 0)  # history vs this run


def test_explain_names_the_planted_far_concept(world, corpus):
    det = build(world, corpus, two_pass=True)
    run(det, world, "far")
    explanations = det.explain(world.far_ood_features, top=3)
    assert all(len(e) == 3 for e in explanations)
    hits = [
        e[0][0].rstrip(".") == world.far_concepts[c] and e[0][1] == "ens"
        for e, c in zip(explanations, world.far_ood_concept, strict=False)
    ]
    assert np.mean(hits) > 0.9
    ids = [f"far/{i}" for i in range(len(world.far_ood_features))]
    rows = det.explanation_rows(world.far_ood_features, ids, n_images=4, top=2)
    assert len(rows) == 8 and {r["source"] for r in rows} <= {"ens", "vsnl", "corpus"}


def test_short_stream_warns(world, corpus, caplog):
    det = build(world, corpus, min_candidates=200, vsnl_start=10, vsnl_every=40)
    batches, _ = stream(world, "far", batch=256)
    with caplog.at_level(logging.WARNING, logger="negspace.detectors.ants"):
        det.score_stream(batches[:3])
    message = next(r.getMessage() for r in caplog.records if "two-pass" in r.getMessage())
    # the advice names options that exist: the CLI flag and ANTSConfig fields that it accepts
    assert "--ants-schedule scaled" in message and "--ants-mode two-pass" in message
    fields = dict(item.split("=") for item in re.findall(r"\b(\w+=\d+)", message))
    assert ANTSConfig(**{k: int(v) for k, v in fields.items()}).min_candidates == int(fields["min_candidates"])


# -- the pure rules ----------------------------------------------------------------------------------------


def test_threshold_rules():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.3, 500), rng.uniform(0.95, 1.0, 1500)])
    hist = np.zeros(1000, dtype=np.int64)
    histogram_add(hist, scores)
    cand = scores[scores < 0.9]
    assert abs(histogram_quantile(hist, 0.5, upper=0.9) - np.quantile(cand, 0.5)) < 0.002
    mask, gamma = exact_paper_negatives(scores, 0.9, 0.5)
    assert mask.sum() == 250 and gamma == np.sort(cand)[249]
    assert histogram_threshold(hist, 0.5) < 0.3
    assert exact_paper_negatives(np.ones(5), 0.9, 0.5)[1] is None


def test_kcenter_spreads():
    pts = np.asarray([[1, 0], [0.99, 0.141], [0, 1], [-1, 0]], dtype=np.float32)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    assert sorted(kcenter_greedy(pts, 3, first=0).tolist()) == [0, 2, 3]


def test_scaled_schedule_and_protocol(world):
    assert scaled_schedule(60_000, 256) == {"min_candidates": 200, "vsnl_start": 10, "vsnl_every": 40}
    small = scaled_schedule(1_000, 50)
    assert small["min_candidates"] < 200 and small["vsnl_every"] < 40
    assert isinstance(ScriptedMLLM(world), MLLM)


class SlowMLLM(ScriptedMLLM):
    """The scripted answers, each generate call taking ``delay`` seconds."""

    def __init__(self, world, delay: float) -> None:
        super().__init__(world)
        self.delay = delay

    def generate(self, requests):
        import time

        time.sleep(self.delay)
        return super().generate(requests)


def test_mllm_answers_arrive_at_a_fixed_batch_whatever_the_mllm_speed(world, corpus):
    """Background MLLM work changes the banks at batch t + lag, so speed never changes scores;
    lag 0 (default) scores a batch after its own updates, so it differs from lag 1."""
    blocking = np.concatenate(run(build(world, corpus, mllm_lag=0), world, "far"))
    background = np.concatenate(run(build(world, corpus, mllm_lag=1), world, "far"))
    slow = np.concatenate(run(build(world, corpus, SlowMLLM(world, 0.05), mllm_lag=1), world, "far"))
    np.testing.assert_array_equal(background, slow)
    assert not np.array_equal(blocking, background)
    assert ANTSConfig().mllm_lag == 0


class GatedMLLM(ScriptedMLLM):
    """The scripted answers, each generate call held until the test opens ``gate``; ``finished``
    counts the calls that returned."""

    def __init__(self, world) -> None:
        super().__init__(world)
        self.gate, self.started = threading.Event(), threading.Event()
        self.finished = 0

    def generate(self, requests):
        self.started.set()
        # Bounded, so a detector that waits for its MLLM fails this test (the gate is then open
        # for good) instead of hanging it.
        if not self.gate.wait(timeout=30):
            self.gate.set()
        answers = super().generate(requests)
        self.finished += 1
        return answers


def test_scoring_does_not_wait_for_the_mllm(world, corpus):
    mllm = GatedMLLM(world)
    det = build(world, corpus, mllm, mllm_lag=3)
    batches, _ = stream(world, "far")
    try:
        for batch in batches:
            det.score_features(batch.features, images=batch.images)
            if det._jobs:
                break
        assert det._jobs, "no MLLM work was started"
        # the batch that asked returned while its MLLM call was still held at the gate
        assert mllm.started.wait(timeout=60) and mllm.finished == 0 and not mllm.gate.is_set()
    finally:
        mllm.gate.set()
    det.wait_for_mllm()
    assert mllm.finished >= 1 and not det._jobs and det.state.ens_updates + det.state.vsnl_updates >= 1
    assert det.state.mllm_requests <= det.config.max_mllm_calls


def test_ens_leaves_budget_for_vsnl(world, corpus):
    """A budget smaller than the stream's negatives: ENS stops at its share, VSNL still asks."""
    mllm = ScriptedMLLM(world)
    reserve = int(np.ceil(SCHEDULE.get("delta", 0.08) * len(world.class_names)))
    det = build(world, corpus, mllm=mllm, max_mllm_calls=reserve + 6, vsnl_start=4)
    run(det, world, "near")
    assert mllm.received <= reserve + 6
    # Every class of Y' got its answer (without the reserve, ENS took one of those requests).
    assert len(det.state.vsnl_answers) == reserve and det.state.vsnl_updates >= 1
