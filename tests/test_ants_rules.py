"""Each ANTS rule against a hand-computed expectation or a slow direct formula (docs/methods/ants.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negspace.detectors.ants import ANTS
from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.rules import (
    activation_ens_score,
    activation_threshold,
    changing_bank_groups,
    changing_bank_score,
    fusion_weight,
    histogram_threshold,
    top_counts,
)
from negspace.detectors.base import StreamBatch
from negspace.metrics import auroc
from negspace.testing import make_world
from numerics import assert_scores_close, score_bound
from test_ants import ScriptedMLLM, StubEncoder, build, neglabel_auroc, run, stream

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)

TAU = 0.01


def direct_mass(id_cos, neg_cos):
    """ID softmax mass over ID ∪ negatives, with plain exponentials (cosines are small here)."""
    e_id, e_neg = np.exp(id_cos / TAU), np.exp(neg_cos / TAU)
    return e_id.sum(1) / (e_id.sum(1) + e_neg.sum(1))


# -- the histogram threshold ---------------------------------------------------------------------------


def test_histogram_threshold_by_hand():
    # counts per 0.1 bin: [3, 10, 0, 0, 0, 0, 0, 0, 0, 50]; the largest jump is 0 -> 50, into the
    # last bin, so the bound is 0.9 and gamma* = the median of the 13 scores below it = 0.15
    scores = [0.05] * 3 + [0.15] * 10 + [0.95] * 50
    assert histogram_threshold(np.asarray(scores), 0.5) == pytest.approx(0.15)
    # linear interpolation between order statistics, not inside histogram bins:
    # below 0.9 lie 0.11, 0.12, 0.13, 0.34 -> the 50th percentile is (0.12 + 0.13) / 2
    scores = [0.11, 0.12, 0.13, 0.34] + [0.97] * 40
    assert histogram_threshold(np.asarray(scores), 0.5) == pytest.approx(0.125, abs=1e-7)
    # the 30th percentile of [0.11, 0.12, 0.13, 0.34]: position 0.9 -> 0.11 + 0.9 * 0.01
    assert histogram_threshold(np.asarray(scores), 0.3) == pytest.approx(0.119, abs=1e-7)
    # the jump is into the bin [0.5, 0.6), so the bound is 0.5 and no score lies below it: all are used
    assert histogram_threshold(np.asarray([0.55] * 8 + [0.58] * 2), 0.5) == pytest.approx(0.55, abs=1e-6)
    assert histogram_threshold(np.zeros(0), 0.5) is None


# -- Y' and its tie-break ----------------------------------------------------------------------------------


def test_top_counts_break_ties_by_first_occurrence():
    counts = np.asarray([2, 3, 3, 1, 0])
    first_seen = np.asarray([0, 5, 2, 1, 9])
    assert top_counts(counts, 4, first_seen) == [2, 1, 0, 3]  # 2 was seen before 1
    assert top_counts(counts, 4) == [1, 2, 0, 3]  # without positions: class index
    assert top_counts(counts, 10, first_seen) == [2, 1, 0, 3]  # never-predicted classes are left out


def test_history_rule_orders_like_counter_most_common():
    """Y' of the authors' rule is ``Counter(predictions).most_common(40)`` over the stream."""
    from collections import Counter

    world = make_world(n_classes=12, n_per_class=6, n_per_concept=20)
    det = ANTS.from_features(
        world.id_text_features,
        world.negatives(200)[1],
        StubEncoder(world),
        None,
        world.class_names,
        config=ANTSConfig.authors(groups=10, history_top=7),
    )
    predictions: list[int] = []
    batches, _ = stream(world, "near", seed=4, batch=16)
    for batch in batches:
        predictions += np.argmax(batch.features @ world.id_text_features.T, axis=1).tolist()
        det.score_features(batch.features)
        assert det.similar_classes() == [c for c, _ in Counter(predictions).most_common(7)]


# -- grouping of the changing banks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "groups", "dropped"),
    [(60, 1, 0), (100, 1, 0), (198, 1, 0), (250, 2, 0), (301, 3, 1), (999, 9, 0), (1099, 10, 9)],
)
def test_changing_bank_groups(n, groups, dropped):
    order, g = changing_bank_groups(n, 100)
    assert g == groups and len(order) == n - dropped
    if n > 100:  # the seeded permutation of the rows kept, the last n mod G left out
        expected = torch.randperm(n - dropped, generator=torch.Generator().manual_seed(0)).numpy()
        np.testing.assert_array_equal(order, expected)
        assert len(order) // g >= 100


def test_changing_bank_score_against_direct_groups():
    rng = np.random.default_rng(0)
    id_cos, bank_cos = rng.uniform(-0.1, 0.4, (5, 4)), rng.uniform(-0.1, 0.4, (5, 301))
    order, groups = changing_bank_groups(301, 100)
    size = len(order) // groups
    direct = np.mean([direct_mass(id_cos, bank_cos[:, order[g * size : (g + 1) * size]]) for g in range(groups)], 0)
    np.testing.assert_allclose(changing_bank_score(id_cos, bank_cos, order, groups, TAU), direct, rtol=1e-10)
    # a bank of 198 rows is one group of all 198 (not 100 of them)
    order, groups = changing_bank_groups(198, 100)
    np.testing.assert_allclose(
        changing_bank_score(id_cos, bank_cos[:, :198], order, groups, TAU),
        direct_mass(id_cos, bank_cos[:, :198]),
        rtol=1e-10,
    )


def test_every_ens_sentence_is_scored():
    """198 sentences: the ENS score uses all of them (the old fixed groups of 100 dropped 98)."""
    world = make_world()
    det = build(world, world.negatives(1000), mode="ens")
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((198, world.dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    det.state.add_ens([f"s{i}" for i in range(198)], bank, np.ones(198), prepend=False)
    image = world.far_ood_features[:8]
    expected = direct_mass(image @ world.id_text_features.T, image @ bank.T)
    assert_scores_close(det.score_fixed(image), expected, dim=world.dim, tau=TAU)


# -- the activation-aware ENS score ---------------------------------------------------------------------


def test_two_cluster_threshold_takes_the_first_minimum_and_the_median_without_a_split():
    # 0.1 and 0.9: every t in (0.1, 0.9] gives the same split, the first is 0.11
    assert activation_threshold(np.asarray([0.1, 0.1, 0.9, 0.9])) == pytest.approx(0.11)
    # one value: no threshold splits it, the lower median is returned
    assert activation_threshold(np.asarray([0.42, 0.42, 0.42])) == pytest.approx(0.42)


def slow_activation(id_cos, ens_cos, reference, t, gap, count, step):
    high = [i for i in range(len(reference)) if reference[i] > t + gap * (1 - t)]
    low = [i for i in range(len(reference)) if reference[i] < t - gap * t]
    if not high or not low:
        return None
    rows = []
    for i in range(len(id_cos)):
        e = np.exp(np.concatenate([id_cos[i], ens_cos[i]]) / TAU)
        rows.append(e[id_cos.shape[1] :] / e.sum())
    p = np.asarray(rows)
    relevance = [np.mean([p[i, j] for i in low]) - np.mean([p[i, j] for i in high]) for j in range(ens_cos.shape[1])]
    top = sorted(range(len(relevance)), key=lambda j: (-relevance[j], j))[:count]
    sizes = list(range(step, len(top) + 1, step))
    if sizes[-1] != len(top):
        sizes.append(len(top))
    return np.asarray(
        [
            np.mean([direct_mass(id_cos[i : i + 1], ens_cos[i : i + 1, top[:m]])[0] for m in sizes])
            for i in range(len(id_cos))
        ]
    )


@pytest.mark.parametrize(("count", "step"), [(5, 2), (4, 2), (7, 3), (100, 2)])
def test_activation_score_against_a_slow_direct_formula(count, step):
    rng = np.random.default_rng(2)
    id_cos, ens_cos = rng.uniform(0.0, 0.3, (6, 3)), rng.uniform(0.0, 0.3, (6, 9))
    reference = np.asarray([0.05, 0.9, 0.1, 0.95, 0.5, 0.02])
    got = activation_ens_score(id_cos, ens_cos, reference, 0.4, gap=0.5, negatives=count, step=step, tau=TAU)
    np.testing.assert_allclose(got, slow_activation(id_cos, ens_cos, reference, 0.4, 0.5, count, step), rtol=1e-9)
    # no confident-high sample: the reference score is kept (None)
    assert (
        activation_ens_score(id_cos, ens_cos, np.full(6, 0.1), 0.4, gap=0.5, negatives=count, step=step, tau=TAU)
        is None
    )


def test_activation_ens_is_used_online_and_survives_save_load(tmp_path):
    world = make_world()
    corpus = world.negatives(1000)
    det = build(world, corpus, mode="ens", ens_score="activation", activation_negatives=50)
    id_s, ood_s = run(det, world, "far")
    assert det.state.activation_window.count > 0 and det.state.ens_count > 0
    assert auroc(id_s, ood_s) > neglabel_auroc(world, corpus, "far")
    det.freeze()
    det.save(tmp_path / "space")
    loaded = ANTS.load(tmp_path / "space")
    batch = world.far_ood_features[:64]
    np.testing.assert_array_equal(det.score_features(batch), loaded.score_features(batch))
    assert loaded.state.activation_window.count == det.state.activation_window.count  # frozen: unchanged


# -- the schedule: order within a batch, ens_stop_step, leftovers ----------------------------------------


def test_a_batch_is_scored_after_its_own_update_with_lag_0_and_before_it_with_lag_1():
    world = make_world()
    corpus = world.negatives(1000)
    batches, _ = stream(world, "far")
    for lag in (0, 1):
        det = build(world, corpus, mode="ens", mllm_lag=lag)
        for batch in batches:
            before = det.score_fixed(batch.features)
            got = det.score_features(batch.features, images=batch.images)
            if det.state.ens_updates == 1:
                break
        det.wait_for_mllm()
        after = det.score_fixed(batch.features)  # the banks once the first update is applied
        assert det.state.ens_count > 0
        if lag == 0:
            np.testing.assert_array_equal(got, after)
            assert not np.array_equal(got, before)
        else:
            np.testing.assert_array_equal(got, before)


def test_ens_stop_step_limits_the_updates():
    world = make_world()
    det = build(world, world.negatives(1000), ens_stop_step=2, min_candidates=10)
    run(det, world, "far")
    assert det.state.ens_updates == 2
    free = build(world, world.negatives(1000), min_candidates=10)
    run(free, world, "far")
    assert free.state.ens_updates > 2


def test_pooled_negatives_are_described_at_the_end_and_counted():
    world = make_world()
    corpus = world.negatives(1000)
    batches, _ = stream(world, "far")
    kept = build(world, corpus, mode="ens", min_candidates=10_000)  # never reached during the stream
    kept.score_stream(batches)
    info = kept.run_info()
    assert info["ens_updates"] == 1 and info["negatives_pooled"] == 0
    assert info["negatives_described"] == info["negatives_mined"] > 0 and info["ens_size"] > 0
    left = build(world, corpus, mode="ens", min_candidates=10_000, describe_leftovers=False)
    left.score_stream(batches)
    assert left.run_info()["negatives_pooled"] == left.state.negatives_mined and left.state.ens_count == 0
    # a budget: mined = described + left undescribed for the budget
    capped = build(world, corpus, mode="ens", max_mllm_calls=30, min_candidates=20)
    capped.score_stream(batches)
    st = capped.state
    assert st.negatives_undescribed_budget > 0
    assert st.negatives_described + st.negatives_undescribed_budget == st.negatives_mined
    # two-pass: every negative is described (no budget), none left over
    two = build(world, corpus, mode="ens", two_pass=True)
    two.score_stream(batches)
    assert two.state.negatives_described == two.state.negatives_mined > 0


# -- counts of partly used answers ------------------------------------------------------------------


def test_partial_answers_are_counted_apart_from_rejected_ones():
    world = make_world()
    corpus = world.negatives(1000)

    class Naming(ScriptedMLLM):
        def generate(self, requests):
            out = super().generate(requests)
            texts = [" ".join(p.text for m in r.messages for p in m.content if hasattr(p, "text")) for r in requests]
            return [
                f"A photo of a {t.split('class name ')[1].rstrip('.')} on green grass." if "Describe" in t else a
                for t, a in zip(texts, out, strict=False)
            ]

    stripped = build(world, corpus, Naming(world))
    run(stripped, world, "far")
    st = stripped.state
    assert st.ens_names_removed > 0 and st.rejected_answers == 0
    assert st.ens_texts and not any("class" in t for t in st.ens_texts)  # "A photo of a on green grass"
    assert st.vsnl_id_names_removed > 0  # the scripted answers start with another ID class
    kept = build(world, corpus, Naming(world), strip_class_names=False)
    run(kept, world, "far")
    assert kept.state.ens_names_removed == 0 and any("class" in t for t in kept.state.ens_texts)
    info = stripped.run_info()
    assert info["ens_answers_class_name_removed"] == st.ens_names_removed
    assert info["vsnl_id_names_removed"] == st.vsnl_id_names_removed


# -- lam ------------------------------------------------------------------------------------------------


def test_paper_lam_is_eq15_with_the_current_banks():
    world = make_world()
    det = build(world, world.negatives(1000))
    run(det, world, "far")
    st = det.state
    negatives = st.neg_sample.rows()
    id_cos = negatives @ world.id_text_features.T

    def grouped(bank):
        order, groups = changing_bank_groups(len(bank), 100)
        size = len(order) // groups
        cos = negatives @ bank.T
        return np.mean([direct_mass(id_cos, cos[:, order[g * size : (g + 1) * size]]) for g in range(groups)], 0)

    a, b = grouped(st.ens_bank).mean(), grouped(st.vsnl_bank).mean()
    got_a, got_b, lam = det.lam_terms()
    # a and b are means of scores: within the score bound at their value (min(s, 1 - s) is concave)
    da, db = (float(score_bound(np.asarray(x), dim=world.dim, tau=TAU)) for x in (a, b))
    assert abs(got_a - a) <= da and abs(got_b - b) <= db
    # lam = (1 - a) / ((1 - a) + (1 - b)): its first-order error from those of a and b
    assert abs(lam - fusion_weight(a, b)) <= 1.01 * (da * (1 - b) + db * (1 - a)) / ((1 - a) + (1 - b)) ** 2
    assert fusion_weight(1.0, 1.0) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_lam_moves_the_right_way(seed):
    """Done-when of the issue: far-OOD >= 0.70, near-OOD <= 0.35 (Eq. 15 with the final banks),
    and ANTS beats NegLabel on both."""
    world = make_world(seed=seed, n_per_class=50)
    corpus = world.negatives(1000)
    far = build(world, corpus)
    far_id, far_ood = run(far, world, "far", seed=seed)
    near = build(world, corpus)
    near_id, near_ood = run(near, world, "near", seed=seed)
    assert far.lam >= 0.70 and near.lam <= 0.35, (far.lam, near.lam)
    assert auroc(far_id, far_ood) > neglabel_auroc(world, corpus, "far")
    assert auroc(near_id, near_ood) > neglabel_auroc(world, corpus, "near")


def test_lam_rules_and_their_reports():
    world = make_world()
    corpus = world.negatives(1000)
    for rule in ("paper", "authors", "crossfit"):
        det = build(world, corpus, lam_rule=rule)
        run(det, world, "far")
        info = det.run_info()
        assert info["lam_rule"] == rule and info["a"] is not None and info["b"] is not None
        eq15 = (1 - info["a"]) / ((1 - info["a"]) + (1 - info["b"]))
        if rule == "crossfit":  # a point of its grid of 21, chosen by AUROC
            assert min(abs(info["lam"] - k / 20) for k in range(21)) < 1e-12
        else:  # Eq. 15 of the a and b it reports
            assert info["lam"] == pytest.approx(eq15, abs=1e-12)
    authors = build(world, corpus, lam_rule="authors")
    run(authors, world, "far")
    st = authors.state
    assert st.balanced_count == len(world.id_image_features) + len(world.far_ood_features)  # every sample


# -- the preset -------------------------------------------------------------------------------------------


def test_authors_preset_lists_its_rules_and_takes_overrides():
    preset = ANTSConfig.authors()
    default = ANTSConfig()
    changed = {k for k, v in preset.as_dict().items() if default.as_dict()[k] != v}
    assert changed == {
        "threshold",
        "ens_trigger",
        "ens_stop_step",
        "describe_order",
        "ens_order",
        "ens_dedupe",
        "strip_class_names",
        "description_words",
        "describe_leftovers",
        "similar_classes",
        "vsnl_cache",
        "lam_rule",
        "max_mllm_calls",
    }
    far = ANTSConfig.authors(mode="ens", ens_score="activation", ens_stop_step=10, activation_negatives=500)
    assert (far.mode, far.ens_score, far.ens_stop_step, far.activation_negatives, far.threshold) == (
        "ens",
        "activation",
        10,
        500,
        "histogram",
    )
    with pytest.raises(ValueError, match="lam_rule"):
        ANTSConfig(lam_rule="magic")


def test_score_stream_can_continue_without_finishing():
    world = make_world()
    det = build(world, world.negatives(1000), mode="ens", min_candidates=10_000)
    batches, _ = stream(world, "far")
    det.score_stream(batches[:5], finish=False)
    assert det.state.pending_count > 0 and det.state.ens_count == 0
    det.score_stream([StreamBatch(b.features, b.images) for b in batches[5:]])
    assert det.state.pending_count == 0 and det.state.ens_count > 0
