"""CSP: the conjugated pool, the selection and the score against a literal restatement of the
authors' code (MengyuanChen21/NeurIPS2024-CSP: multi_modal.py builds the pool and selects,
clip_ood.py scores), and CSP as every other detector (eval, save/load, torch, score, bench)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from image_sets import write_sets
from negspace.cli import main
from negspace.corpus.csp import (
    CSP_EXCLUDED_FILES,
    PoolSelection,
    conjugated_pool,
    label_ratios,
    load_pool,
    lowest,
)
from negspace.corpus.wordnet import lexicographer_files
from negspace.detectors.csp import CSP, CSPConfig
from negspace.methods import load_detector
from negspace.templates import CSP_SUPERCLASS_WORDS
from negspace.testing import make_world
from numerics import assert_same_selection, assert_scores_close, cosine_error

pytestmark = pytest.mark.numerics


# -- the authors' code, restated literally (torch, float32, their order of operations) ----------------


def authors_pool(files: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """multi_modal.py: one random.seed(0), files in the given order, a word seen before skipped,
    one random.choice of the superclass template per adjective kept."""
    templates = ["{} " + word for word in CSP_SUPERCLASS_WORDS]
    random.seed(0)
    dedup: dict[str, int] = {}
    nouns, adjectives = [], []
    for file, lines in files.items():
        kind = file.split(".")[0]
        if kind not in ("noun", "adj"):
            continue
        for line in lines:
            if line.strip() in dedup:
                continue
            dedup[line.strip()] = 1
            if kind == "noun":
                nouns.append(line.strip())
            else:
                adjectives.append(random.choice(templates).format(line.strip()))
    return nouns, adjectives


def authors_selection(noun_features, adjective_features, id_features, percentile=0.95, topk=0.15):
    """multi_modal.py's selection: 0.95-quantile of the cosines, 1.0 above a 0.95 maximum,
    ascending argsort, the lowest int(n * 0.15) of each part, nouns then adjectives."""
    chosen = []
    for features in (noun_features, adjective_features):
        tmp = torch.from_numpy(features) @ torch.from_numpy(id_features).T
        sim = torch.quantile(tmp, q=percentile, dim=-1)
        maximum = torch.max(tmp, dim=1)[0]
        sim[maximum > 0.95] = 1.0
        order = torch.argsort(sim)
        chosen.append(order[: int(len(sim) * topk)].numpy())
    return chosen


def authors_score(image, id_features, neg_features, ngroup=100):
    """clip_ood.py: logits at scale 100, the last N mod G negatives dropped, randperm with
    manual_seed(0), per group the ID softmax mass, the mean over groups."""
    pos = 100.0 * torch.from_numpy(image) @ torch.from_numpy(id_features).T
    neg = 100.0 * torch.from_numpy(image) @ torch.from_numpy(neg_features).T
    drop = neg.shape[1] % ngroup
    if drop > 0:
        neg = neg[:, :-drop]
    torch.manual_seed(0)
    idx = torch.randperm(neg.shape[1])
    negs = neg.T[idx].T.reshape(pos.shape[0], ngroup, -1)
    scores = []
    for g in range(ngroup):
        full = torch.cat([pos, negs[:, g, :]], dim=-1)
        scores.append(torch.softmax(full.double(), dim=-1)[:, : pos.shape[1]].sum(dim=-1))
    return torch.stack(scores, dim=-1).mean(dim=-1).numpy()


def ratio_key(labels, id_features, quantile, saturate_above):
    """``r(n)`` restated in float64 (the key both selections rank), and the labels whose largest
    cosine lies within float32 error of ``saturate_above`` (saturated or not: either is right)."""
    cosines = labels.astype(np.float64) @ id_features.astype(np.float64).T
    key, top = np.quantile(cosines, quantile, axis=1), cosines.max(axis=1)
    key[top > saturate_above] = 1.0
    return key, np.abs(top - saturate_above) <= cosine_error(labels.shape[1])


# -- the pool ----------------------------------------------------------------------------------------


def test_the_pool_is_the_authors_rule_on_the_files_in_sorted_order():
    files = {name: list(words) for name, words in lexicographer_files().items() if name not in CSP_EXCLUDED_FILES}
    nouns, phrases = authors_pool({name: files[name] for name in sorted(files)})
    pool = load_pool()
    assert list(pool.nouns) == nouns and list(pool.phrases) == phrases
    assert len(pool.nouns) > 40_000 and len(pool.phrases) > 10_000
    assert load_pool() == pool  # reproducible
    assert load_pool(seed=1).phrases != pool.phrases and load_pool(seed=1).nouns == pool.nouns


def test_the_pool_leaves_out_the_files_and_conjugates_every_adjective():
    files = lexicographer_files()
    pool = load_pool()
    kept_nouns = {
        w for name, words in files.items() if name.startswith("noun.") and name not in CSP_EXCLUDED_FILES for w in words
    }
    only_excluded = (
        {w for name in CSP_EXCLUDED_FILES for w in files.get(name, ())}
        - kept_nouns
        - {
            w
            for name, words in files.items()
            if name.startswith("adj.") and name not in CSP_EXCLUDED_FILES
            for w in words
        }
    )
    assert only_excluded and not only_excluded & set(pool.nouns)  # e.g. people's names are not there
    assert set(pool.nouns) <= kept_nouns
    assert len(set(pool.nouns) | set(pool.adjectives)) == len(pool.nouns) + len(pool.adjectives)  # each word once
    for phrase, adjective in zip(pool.phrases, pool.adjectives, strict=False):
        assert phrase.startswith(adjective + " ") and phrase[len(adjective) + 1 :] in CSP_SUPERCLASS_WORDS
    assert len({p.rsplit(" ", 1)[1] for p in pool.phrases}) == len(CSP_SUPERCLASS_WORDS)
    # a word in an adjective file and a noun file is an adjective: adj.* files are read first
    both = set(files["adj.all"]) & set(files["noun.artifact"])
    assert both and both <= set(pool.adjectives) and not both & set(pool.nouns)


# -- selection and score against the restatement -------------------------------------------------


@pytest.fixture(scope="module")
def world():
    return make_world(dim=64, n_classes=30, n_corpus=2500, seed=3)


def test_selection_matches_the_authors_code(world):
    nouns = world.corpus_features[:1700]
    phrases = world.corpus_features[1700:]
    # an ID name in the pool (the authors keep them): its ratio saturates to 1 and it is never kept
    nouns = np.concatenate([nouns, world.id_text_features[:3]]).astype(np.float32)
    want_nouns, want_phrases = authors_selection(nouns, phrases, world.id_text_features)
    rule = PoolSelection()
    got_nouns = lowest(label_ratios(nouns, world.id_text_features, rule.quantile, rule.saturate_above), 0.15)
    got_phrases = lowest(label_ratios(phrases, world.id_text_features), 0.15)
    # NumPy's float32 cosines against torch's: the same picks in the same order but for near-ties
    for got, want, labels in ((got_nouns, want_nouns, nouns), (got_phrases, want_phrases, phrases)):
        key, free = ratio_key(labels, world.id_text_features, rule.quantile, rule.saturate_above)
        assert_same_selection(got, want, key, bound=cosine_error(world.dim), free=free)
    assert len(got_nouns) == int(len(nouns) * 0.15) and len(got_phrases) == int(len(phrases) * 0.15)
    ratios = label_ratios(nouns, world.id_text_features)
    assert np.all(ratios[-3:] == 1.0) and not set(range(len(nouns) - 3, len(nouns))) & set(got_nouns)


@pytest.mark.parametrize("n_bank", [2000, 2077])  # 2077: 77 labels dropped before grouping
def test_score_matches_the_authors_code(world, n_bank):
    bank = world.corpus_features[:n_bank]
    images = np.concatenate([world.id_image_features[:40], world.far_ood_features[:40], world.near_ood_features[:40]])
    want = authors_score(images, world.id_text_features, bank)
    got = CSP.from_features(world.id_text_features, bank).score_features(images)
    assert_scores_close(got, want, dim=world.dim)
    torch_scores = CSP.from_features(world.id_text_features, bank, backend="torch", device="cpu").score_features(images)
    assert_scores_close(torch_scores, want, dim=world.dim)


def test_config_defaults_and_checks():
    config = CSPConfig()
    assert (config.tau, config.groups, config.quantile, config.saturate_above, config.fraction) == (
        0.01,
        100,
        0.95,
        0.95,
        0.15,
    )
    with pytest.raises(ValueError, match="fraction"):
        CSPConfig(fraction=0)
    with pytest.raises(ValueError, match="quantile"):
        CSPConfig(quantile=1.5)


def test_conjugated_pool_is_order_dependent_as_the_authors_say():
    files = {"adj.all": ["red", "blue", "stone"], "noun.artifact": ["stone", "wall"]}
    pool = conjugated_pool(files)
    assert pool.nouns == ("wall",) and pool.adjectives == ("red", "blue", "stone")
    assert authors_pool(files) == (list(pool.nouns), list(pool.phrases))


# -- as every other detector, on the tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("csp") / "corpus.txt"
    rng = random.Random(0)
    nouns = [f"thing{i}" for i in range(400)] + ["red square"]  # an ID name among them
    adjectives = [f"adj{i}\tadj" for i in range(120)]
    lines = nouns + adjectives
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


def test_eval_csp_saves_a_detector_that_scores_the_same(tmp_path, tiny_openclip, small_corpus, capsys):
    images = write_sets(tmp_path)
    out, saved = tmp_path / "run", tmp_path / "det"
    assert (
        main(
            [
                "eval",
                "--method",
                "csp",
                "--classes",
                str(images["classes"]),
                "--id",
                str(images["id"]),
                "--ood",
                f"noise={images['ood']}",
                "--corpus",
                str(small_corpus),
                "--groups",
                "10",
                "--out",
                str(out),
                "--save-detector",
                str(saved),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["n_negatives"] == int(401 * 0.15) + int(120 * 0.15)
    detector = load_detector(saved)
    assert isinstance(detector, CSP) and detector.config.groups == 10
    assert "red square" not in detector.neg_labels  # saturated: an ID name is never a negative
    phrases = detector.neg_labels[int(401 * 0.15) :]
    assert all(p.rsplit(" ", 1)[1] in CSP_SUPERCLASS_WORDS and p.startswith("adj") for p in phrases)
    features = np.random.default_rng(0).standard_normal((7, detector.id_text_features.shape[1])).astype(np.float32)
    again = load_detector(saved)
    np.testing.assert_array_equal(again.score_features(features), detector.score_features(features))
    # the score command applies the saved detector and builds one from --method csp
    scored = tmp_path / "scored"
    assert main(["score", str(images["id"]), "--detector", str(saved), "--out", str(scored), "-q"]) == 0
    assert list(scored.glob("part-*.parquet"))


def test_csp_corpus_option_refuses_another_wordnet_selection(tmp_path, tiny_openclip, capsys):
    images = write_sets(tmp_path)
    code = main(
        [
            "eval",
            "--method",
            "csp",
            "--classes",
            str(images["classes"]),
            "--id",
            str(images["id"]),
            "--ood",
            f"noise={images['ood']}",
            "--corpus",
            "all",
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 2 and "CSP builds its pool from CSP's WordNet selection" in capsys.readouterr().err
