"""TINS: its scaled group score and its dynamic bank with the buffer, against a literal restatement
of the authors' eval_tins_w_init.py (zxk1212/tins), reset and save/load, the word-initialised
inversion on the tiny model, and an eval run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fewshot_world import prototypes_of, rotating_inverter
from image_sets import write_sets
from negspace.cli import main
from negspace.detectors.tins import TINS, TINSConfig
from negspace.methods import load_detector
from negspace.testing import make_world
from numerics import assert_features_close, assert_scores_close

pytestmark = pytest.mark.numerics


def authors_score(image, id_features, negatives, group_num=5, scale=100.0):
    """compute_grouped_positive_score: the tail dropped, permuted with seed 0 (on the CPU: the
    authors draw on CUDA, which no CPU reproduces), per group
    exp(logA - logaddexp(logA, logsumexp(g) - log|g| + log C)), the mean over groups."""
    pos = scale * torch.from_numpy(image).double() @ torch.from_numpy(id_features).double().T
    neg = scale * torch.from_numpy(image).double() @ torch.from_numpy(negatives).double().T
    drop = neg.shape[1] % group_num
    if drop:
        neg = neg[:, :-drop]
    torch.manual_seed(0)
    neg = neg[:, torch.randperm(neg.shape[1])].reshape(len(pos), group_num, -1)
    log_a = torch.logsumexp(pos, dim=1, keepdim=True)
    log_c = np.log(pos.shape[1])
    per_group = torch.exp(log_a - torch.logaddexp(log_a, torch.logsumexp(neg, dim=2) - np.log(neg.shape[2]) + log_c))
    return per_group.mean(dim=1).numpy()


def authors_stream(batches, id_features, fixed, prototypes, invert, beta, bank_size, buffer_size):
    """The per-batch update: invert below beta, keep what passes, the bank sorted and cut to K,
    the overflow to the buffer, a full buffer's top half pooled and a seeded random K kept,
    re-scored only when something passed."""
    base = torch.sum(torch.from_numpy(id_features) * torch.from_numpy(prototypes), dim=1)
    bank, scores = torch.zeros((0, fixed.shape[1])), torch.zeros(0, dtype=torch.float64)
    buffer, buffer_scores = torch.zeros((0, fixed.shape[1])), torch.zeros(0, dtype=torch.float64)
    out = []
    for image in batches:
        current = authors_score(image, id_features, np.concatenate([fixed, bank.numpy()]))
        trigger = current < beta
        if not trigger.any():
            out.append(current)
            continue
        new = torch.from_numpy(invert(image[trigger]))
        sim = new @ torch.from_numpy(prototypes).T
        valid = torch.all(sim < base, dim=1)
        if not valid.any():
            out.append(current)
            continue
        d = (base - sim).mean(1).double()
        combined, combined_scores = torch.cat([bank, new[valid]]), torch.cat([scores, d[valid]])
        order = torch.sort(combined_scores, descending=True).indices
        bank, scores = combined[order[:bank_size]], combined_scores[order[:bank_size]]
        rest = order[bank_size:]
        if len(rest):
            buffer, buffer_scores = (
                torch.cat([buffer, combined[rest]]),
                torch.cat([buffer_scores, combined_scores[rest]]),
            )
        if buffer.shape[0] >= buffer_size:
            half = buffer.shape[0] // 2
            top = torch.sort(buffer_scores, descending=True).indices[:half]
            pool, pool_scores = torch.cat([bank, buffer[top]]), torch.cat([scores, buffer_scores[top]])
            torch.manual_seed(0)
            perm = torch.randperm(len(pool))[: min(bank_size, len(pool))]
            bank, scores = pool[perm], pool_scores[perm]
            buffer, buffer_scores = buffer[:0], buffer_scores[:0]
        out.append(authors_score(image, id_features, np.concatenate([fixed, bank.numpy()])))
    return out


@pytest.fixture(scope="module")
def world():
    return make_world(dim=64, n_classes=12, n_corpus=1500, n_per_class=16, seed=9)


def _inverter(world):
    return rotating_inverter(world, seed=13, strength=0.4)


def test_the_score_matches_the_authors_formula(world):
    images = np.concatenate([world.id_image_features[:30], world.far_ood_features[:30]])
    bank = world.corpus_features[:303]  # 3 dropped before grouping
    got = TINS.from_features(world.id_text_features, bank, prototypes_of(world)).score_features(images)
    assert_scores_close(got, authors_score(images, world.id_text_features, bank), dim=world.dim)


def test_the_stream_with_bank_and_buffer_matches_the_authors_loop(world, tmp_path):
    prototypes = prototypes_of(world)
    fixed = world.corpus_features[:300]
    images = np.concatenate([world.id_image_features[::2], world.far_ood_features, world.near_ood_features])
    order = np.random.default_rng(1).permutation(len(images))
    batches = [images[order[i : i + 40]] for i in range(0, len(images), 40)]
    invert = _inverter(world)
    want = authors_stream(
        batches, world.id_text_features, fixed, prototypes, invert, beta=0.9, bank_size=30, buffer_size=20
    )
    detector = TINS.from_features(
        world.id_text_features, fixed, prototypes, beta=0.9, learned=30, buffer=20, inverter=invert
    )
    got = [detector.score_features(batch) for batch in batches]
    assert detector.inverted > 0 and len(detector.bank) == 30
    for g, w in zip(got, want, strict=False):
        assert_scores_close(g, w, dim=world.dim)
    detector.reset()
    again = [detector.score_features(batch) for batch in batches]
    for g, a in zip(got, again, strict=False):
        np.testing.assert_array_equal(g, a)
    detector.save(tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    detector.freeze()
    assert loaded.frozen
    np.testing.assert_array_equal(loaded.score_features(images[:25]), detector.score_features(images[:25]))
    loaded.reset()  # a new stream starts from what it was saved with
    np.testing.assert_array_equal(loaded.score_features(images[:25]), detector.score_features(images[:25]))
    with pytest.raises(ValueError, match="encoder"):
        loaded.unfreeze()


def test_config_defaults():
    config = TINSConfig()
    assert (config.beta, config.steps, config.lam, config.groups, config.learned, config.buffer) == (
        0.3,
        30,
        0.3,
        5,
        2000,
        2000,
    )


def test_word_initialised_inversion_on_the_tiny_model(tiny_openclip):
    from negspace.encoders import load_encoder
    from negspace.encoders.inversion import WordInitialisedInverter

    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", use_cache=False)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((5, encoder.dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    prototypes = rng.standard_normal((3, encoder.dim)).astype(np.float32)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    words = ["stone wall", "lively area", "cloud", "teapot"]
    start = WordInitialisedInverter(encoder, words, prototypes, steps=0)
    first = start(images)  # no step: the best word's own prompt feature
    chosen = start.best_words(torch.from_numpy(images)).tolist()
    expected = encoder.encode_texts([words[i] for i in chosen], template="a photo of a {}.")
    assert_features_close(first, expected)  # the best words' prompts, encoded in another batch
    learned = WordInitialisedInverter(encoder, words, prototypes, steps=30)(images)
    assert np.mean(np.sum(learned * images, 1)) > np.mean(np.sum(first * images, 1))  # closer to the images


def test_eval_tins_on_the_tiny_model(tmp_path, tiny_openclip, capsys):
    sets = write_sets(tmp_path, seed=3, id_per_class=3, shots_per_class=4)
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--method",
                "tins",
                "--classes",
                str(sets["classes"]),
                "--id",
                str(sets["id"]),
                "--ood",
                f"noise={sets['ood']}",
                "--id-shots",
                str(sets["shots"]),
                "--tins-beta",
                "1.0",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--save-detector",
                str(tmp_path / "det"),
                "--model",
                tiny_openclip.spec,
                "--weights",
                str(tiny_openclip.weights),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["inverted"] > 0 and params["n_negatives"] >= 2000
    # the log names the method that runs, and its counts in the order its sentence announces them
    log = capsys.readouterr().err
    assert "TINS: testing" in log and "InterNeg:" not in log
    found = re.search(
        r"TINS: (\d+) of (\d+) nouns and (\d+) of (\d+) adjectives pass the inter-modal test; "
        r"(\d+) nouns and (\d+) adjectives kept",
        log,
    )
    noun_pass, nouns, adjective_pass, adjectives, nouns_kept, adjectives_kept = map(int, found.groups())
    assert nouns_kept + adjectives_kept == params["n_negatives"]
    assert nouns_kept <= noun_pass <= nouns and adjectives_kept <= adjective_pass <= adjectives
    assert load_detector(tmp_path / "det").frozen
