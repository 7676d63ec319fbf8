"""Metrics against hand-computed values and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from negspace.metrics import (
    StreamingOODMetrics,
    aupr_in,
    aupr_out,
    auroc,
    compute_all,
    fpr95,
    fpr95_ood,
    threshold_at_id_recall,
)

# 20 ID scores 1..20 and 10 OOD scores, hand-placed.
ID = np.arange(1, 21, dtype=float)
OOD = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 25.0])


def test_hand_computed_fpr95_both_conventions():
    # 95% of 20 ID = 19 accepted: threshold 2; OOD >= 2: 2.5..8.5 and 25 -> 8 of 10.
    assert threshold_at_id_recall(ID) == 2.0
    assert fpr95(ID, OOD) == pytest.approx(0.8)
    # 95% of 10 OOD rejected needs all 10 (9 = 90% < 95%): threshold above 25 rejects every ID.
    assert fpr95_ood(ID, OOD) == pytest.approx(1.0)


def test_hand_computed_auroc():
    # Pairs (id > ood): OOD 0.5 loses to 20 ID, 1.5 to 19, ..., 8.5 to 12; 25 to none.
    wins = sum(np.sum(o < ID) for o in OOD)
    assert wins == 20 + 19 + 18 + 17 + 16 + 15 + 14 + 13 + 12
    assert auroc(ID, OOD) == pytest.approx(wins / 200)


def test_fpr95_ood_on_a_case_where_it_differs():
    id_scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    ood_scores = np.array([0.1] * 19 + [0.65])
    # OOD+: reject 19 of 20 OOD (95%) with threshold just above 0.1: rejects no ID.
    assert fpr95_ood(id_scores, ood_scores) == 0.0
    # ID+: accept 95% of 5 ID needs all 5 (threshold 0.2): accepts only the 0.65 OOD.
    assert fpr95(id_scores, ood_scores) == pytest.approx(1 / 20)


def test_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    labels = np.r_[np.ones(500), np.zeros(300)]
    scores = np.r_[id_scores, ood_scores]
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, scores))
    assert aupr_in(id_scores, ood_scores) == pytest.approx(average_precision_score(labels, scores))
    assert aupr_out(id_scores, ood_scores) == pytest.approx(average_precision_score(1 - labels, -scores))
    # fpr95 by brute force over the sorted ID scores.
    threshold = np.sort(id_scores)[::-1][int(np.ceil(0.95 * 500)) - 1]
    assert fpr95(id_scores, ood_scores) == pytest.approx(np.mean(ood_scores >= threshold))
    ood_threshold = np.sort(ood_scores)[int(np.ceil(0.95 * 300)) - 1]
    assert fpr95_ood(id_scores, ood_scores) == pytest.approx(np.mean(id_scores <= ood_threshold))


def test_streaming_equals_batch_and_resets():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    stream = StreamingOODMetrics()
    stream.update(id_scores[:100], True)
    mixed = np.r_[id_scores[100:], ood_scores]
    is_id = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    perm = rng.permutation(len(mixed))
    for chunk in np.array_split(perm, 7):
        stream.update(mixed[chunk], is_id[chunk])
    assert stream.compute() == compute_all(id_scores[:100].tolist() + sorted(id_scores[100:]), ood_scores)
    stream.reset()
    with pytest.raises(ValueError, match="at least one"):
        stream.compute()


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan]), np.array([0.2]))
    with pytest.raises(ValueError, match="at least one"):
        fpr95(np.array([]), np.array([0.2]))


def test_markdown_escaping_of_file_names():
    from negspace.report import md_code

    assert md_code("a.png") == "`a.png`"
    assert md_code("we`ird.png") == "`` we`ird.png ``"
    assert md_code("two\nlines.png") == "`two\\nlines.png`" and "\n" not in md_code("x\r\ny")


def test_squashed_scores_are_plotted_on_a_logit_axis():
    from negspace.plots import logit_of_scores, scores_squashed

    squashed = np.concatenate([1 - np.logspace(-11, -6, 50), np.logspace(-9, -7, 50)])
    assert scores_squashed(squashed) and not scores_squashed(np.linspace(0.1, 0.9, 100))
    spread = logit_of_scores(squashed)
    assert np.ptp(spread) > 20 and np.all(np.isfinite(spread))  # 1e-11 .. 1e-6 from 1 become distinct
    assert np.all(np.diff(logit_of_scores(np.asarray([0.2, 0.5, 0.8]))) > 0)
