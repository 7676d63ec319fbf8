"""InterNeg: the inter-modal selection and the per-batch loop (score, invert, filter, bank, re-score)
against a literal restatement of the authors' code (ZhikangXu0112/InterNeg:
openood/networks/clip_fixed_ood_prompt.py selects, openood/postprocessors/
oneoodprompt_postprocessor.py scores and inverts), reset and save/load, and an eval run on the
tiny model with real inversion through its text tower."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewshot_world import prototypes_of, rotating_inverter
from image_sets import write_sets
from negspace.cli import main
from negspace.corpus.interneg import by_deviation, class_baselines, intermodal_test, split_by_survivors
from negspace.detectors.interneg import InterNeg, InterNegConfig
from negspace.methods import load_detector
from negspace.testing import make_world
from numerics import assert_same_selection, assert_scores_close, cosine_error

pytestmark = pytest.mark.numerics


# -- the authors' code, restated literally -----------------------------------------------------------------


def authors_selection(adj_features, noun_features, text_features, prototypes, ood_number=2000):
    """clip_fixed_ood_prompt.py: survivors of the strict all-classes test, the adjective share of
    the survivors, the largest mean deviation first; [adjectives; nouns]."""
    can_cos_id = torch.sum(torch.from_numpy(text_features) * torch.from_numpy(prototypes), dim=1)
    chosen, kept = [], []
    for features in (adj_features, noun_features):
        can_cos = torch.from_numpy(features) @ torch.from_numpy(prototypes).T
        mask = torch.all(can_cos < can_cos_id.unsqueeze(0), dim=1)
        kept.append((mask, can_cos))
    n_adj, n_noun = int(kept[0][0].sum()), int(kept[1][0].sum())
    adj_num = int(ood_number * n_adj / (n_adj + n_noun))
    for (mask, can_cos), number in zip(kept, (adj_num, ood_number - adj_num), strict=False):
        survivors = torch.nonzero(mask).flatten()
        d = (can_cos_id - can_cos[survivors]).mean(dim=1)
        order = torch.sort(d, descending=True).indices[:number]
        chosen.append(survivors[order].numpy())
    return chosen


def authors_group_score(image, id_features, negatives, group_num=5):
    pos = 100 * torch.from_numpy(image) @ torch.from_numpy(id_features).T
    neg = 100 * torch.from_numpy(image) @ torch.from_numpy(negatives).T
    drop = neg.shape[1] % group_num
    if drop > 0:
        neg = neg[:, :-drop]
    torch.manual_seed(0)
    idx = torch.randperm(neg.shape[1])
    negs = neg.T[idx].T.reshape(pos.shape[0], group_num, -1)
    scores = [
        torch.softmax(torch.cat([pos, negs[:, g]], dim=1).double(), dim=1)[:, : pos.shape[1]].sum(1)
        for g in range(group_num)
    ]
    return torch.stack(scores, 1).mean(1).numpy()


def authors_stream(batches, id_features, fixed, prototypes, invert, thres=0.35, extra_length=2000):
    """oneoodprompt_postprocessor.py, batch after batch: score with [fixed; bank[:2000]]; invert the
    images below thres; keep the learned features passing the test; the bank re-sorted by d; the
    whole batch re-scored when some image was inverted."""
    base = torch.sum(torch.from_numpy(id_features) * torch.from_numpy(prototypes), dim=1)
    bank, bank_d, out = np.zeros((0, fixed.shape[1]), np.float32), np.zeros(0), []
    for image in batches:
        conf = authors_group_score(image, id_features, np.concatenate([fixed, bank[:extra_length]]))
        activate = conf < thres
        if activate.sum() == 0:
            out.append(conf)
            continue
        learned = invert(image[activate])
        new = torch.from_numpy(learned) @ torch.from_numpy(prototypes).T
        mask = torch.all(new < base, dim=1).numpy()
        d = (base - new).mean(1).numpy()
        bank = np.concatenate([bank, learned[mask]])
        bank_d = np.concatenate([bank_d, d[mask]])
        order = np.argsort(-bank_d, kind="stable")
        bank, bank_d = bank[order], bank_d[order]
        out.append(authors_group_score(image, id_features, np.concatenate([fixed, bank[:extra_length]])))
    return out


# -- a synthetic world with prototypes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    return make_world(dim=64, n_classes=12, n_corpus=1500, n_per_class=16, seed=7)


def _inverter(world):
    return rotating_inverter(world, seed=11, strength=0.3)


def test_selection_matches_the_authors_code(world):
    prototypes = prototypes_of(world)
    near = prototypes[:6] + 0.05 * np.random.default_rng(0).standard_normal((6, world.dim))  # fail the test
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    adjectives, nouns = np.concatenate([world.corpus_features[:400], near]), world.corpus_features[400:]
    want_adj, want_noun = authors_selection(adjectives, nouns, world.id_text_features, prototypes, 300)
    base = class_baselines(world.id_text_features, prototypes)
    adj_pass, adj_d = intermodal_test(adjectives, prototypes, base)
    noun_pass, noun_d = intermodal_test(nouns, prototypes, base)
    n_adj, n_noun = split_by_survivors(int(adj_pass.sum()), int(noun_pass.sum()), 300)
    # NumPy's float32 cosines against torch's: no label of this world passes or fails the test by
    # less than their float32 error, so both keep the same survivors (hence the same split); the
    # picks by deviation then agree but for near-ties
    bound = cosine_error(world.dim)
    for features, passes, deviation, count, want in (
        (adjectives, adj_pass, adj_d, n_adj, want_adj),
        (nouns, noun_pass, noun_d, n_noun, want_noun),
    ):
        cosines = features.astype(np.float64) @ prototypes.astype(np.float64).T
        margin = (base - cosines).min(axis=1)
        assert not (np.abs(margin) <= bound).any(), "a label of this world passes the test by a float32 near-tie"
        np.testing.assert_array_equal(passes, margin > 0)
        assert_same_selection(
            by_deviation(passes, deviation, count), want, (base - cosines).mean(axis=1), bound=bound, descending=True
        )
    assert 0 < adj_pass.sum() < len(adjectives) and n_adj + n_noun == 300


def test_the_stream_matches_the_authors_loop(world):
    prototypes = prototypes_of(world)
    fixed = world.corpus_features[:300]
    images = np.concatenate([world.id_image_features[::3], world.far_ood_features[::4], world.near_ood_features[::4]])
    order = np.random.default_rng(0).permutation(len(images))
    batches = [images[order[i : i + 32]] for i in range(0, len(images), 32)]
    invert = _inverter(world)
    want = authors_stream(batches, world.id_text_features, fixed, prototypes, invert, thres=0.5, extra_length=40)
    detector = InterNeg.from_features(world.id_text_features, fixed, prototypes, beta=0.5, learned=40, inverter=invert)
    got = [detector.score_features(batch) for batch in batches]
    assert detector.inverted > 0 and 0 < len(detector.learned_features) <= 40
    for g, w in zip(got, want, strict=False):
        assert_scores_close(g, w, dim=world.dim)
    # reset: the same stream again gives the same scores exactly
    detector.reset()
    again = [detector.score_features(batch) for batch in batches]
    for g, a in zip(got, again, strict=False):
        np.testing.assert_array_equal(g, a)


def test_saved_and_loaded_exactly_with_its_learned_bank(world, tmp_path):
    prototypes = prototypes_of(world)
    detector = InterNeg.from_features(
        world.id_text_features, world.corpus_features[:300], prototypes, beta=0.6, inverter=_inverter(world)
    )
    detector.score_features(world.far_ood_features[:64])
    assert len(detector.learned_features) > 0
    detector.save(tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    assert loaded.frozen and len(loaded.learned_features) == len(detector.learned_features)
    detector.freeze()
    probe = world.near_ood_features[:20]
    np.testing.assert_array_equal(loaded.score_features(probe), detector.score_features(probe))
    loaded.reset()  # a new stream starts from what it was saved with
    np.testing.assert_array_equal(loaded.score_features(probe), detector.score_features(probe))
    with pytest.raises(ValueError, match="encoder"):
        loaded.unfreeze()  # learning on needs the text tower


def test_the_inversion_cap_and_the_config():
    assert InterNegConfig().groups == 5 and InterNegConfig().beta == 0.35 and InterNegConfig().steps == 10
    with pytest.raises(ValueError, match="beta"):
        InterNegConfig(beta=2)


def test_at_most_max_inverted_images_per_batch(world):
    calls = []

    def invert(features):
        calls.append(len(features))
        return _inverter(world)(features)

    detector = InterNeg.from_features(
        world.id_text_features,
        world.corpus_features[:300],
        prototypes_of(world),
        beta=0.99,
        max_inverted=3,
        inverter=invert,
    )
    detector.score_features(world.far_ood_features[:20])
    assert calls == [3]


# -- on the tiny model, with real inversion ------------------------------------------------------------------


def test_eval_interneg_with_id_shots_on_the_tiny_model(tmp_path, tiny_openclip, capsys):
    sets = write_sets(tmp_path, seed=2, id_per_class=3, shots_per_class=5)
    base = [
        "eval",
        "--method",
        "interneg",
        "--classes",
        str(sets["classes"]),
        "--id",
        str(sets["id"]),
        "--ood",
        f"noise={sets['ood']}",
        "--model",
        tiny_openclip.spec,
        "--weights",
        str(tiny_openclip.weights),
        "--device",
        "cpu",
        "-q",
        "--batch-size",
        "4",
    ]
    assert main([*base, "--out", str(tmp_path / "none")]) == 2
    assert "InterNeg and TINS need a few labelled ID images per class" in capsys.readouterr().err
    out = tmp_path / "run"
    assert (
        main(
            [
                *base,
                "--id-shots",
                str(sets["shots"]),
                "--shots",
                "4",
                "--interneg-beta",
                "1.0",
                "--out",
                str(out),
                "--save-detector",
                str(tmp_path / "det"),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["id_shots"]["images"] == 12 and metrics["id_shots"]["k"] == 4
    assert metrics["params"]["inverted"] > 0  # every image scored below 1.0 was inverted
    assert metrics["params"]["n_negatives"] == 2000
    detector = load_detector(tmp_path / "det")
    assert detector.frozen and detector.prototypes.shape == (3, detector.id_text_features.shape[1])


def test_bench_draws_interneg_shots_from_the_training_split(tmp_path, tiny_openclip):
    from negspace.bench import BenchConfig, run_suite
    from negspace.bench.miniature import write_miniature
    from negspace.bench.suites import load_suite
    from negspace.runconfig import ModelConfig

    data = write_miniature(load_suite("imagenet"), tmp_path / "data", per_set=2)
    model = ModelConfig(tiny_openclip.spec, tiny_openclip.weights, device="cpu", progress=False)
    config = BenchConfig("imagenet", methods=("interneg", "tins", "mcm"), check_counts=False, batch_size=4, shots=1)
    result = run_suite(config, data_root=data, model=model, out=tmp_path / "out")
    for method in ("interneg", "tins"):
        info = result.evaluations["imagenet"][method].info
        assert info["id_shots"]["images"] == 1000 and info["id_shots"]["seed"] == 0
    rows = (tmp_path / "out" / "results.csv").read_text()
    assert ",Average,InterNeg,FPR95," in rows and ",14.04," in rows and ",Average,TINS,FPR95," in rows
    # a saved InterNeg scores a collection, frozen with what it learned
    saved = tmp_path / "det"
    result.evaluations["imagenet"]["interneg"].detector.save(saved)
    assert (
        main(
            [
                "score",
                str(data / "iNaturalist"),
                "--detector",
                str(saved),
                "--out",
                str(tmp_path / "scored"),
                "--model",
                tiny_openclip.spec,
                "--weights",
                str(tiny_openclip.weights),
                "--device",
                "cpu",
                "--threshold",
                "0.5",
                "-q",
            ]
        )
        == 0
    )
    assert list((tmp_path / "scored").glob("part-*.parquet"))
    # without the training split, InterNeg is skipped and the note says what is missing
    import shutil

    shutil.rmtree(data / "imagenet" / "train")
    result = run_suite(config, data_root=data, model=model)
    assert "interneg" not in result.evaluations["imagenet"]
    assert any("imagenet/train under --data-root, which is missing" in note for note in result.notes)
    assert "tins" not in result.evaluations["imagenet"]
