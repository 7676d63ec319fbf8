"""ANTS's explanations use the negative space that scored each image (issue 27, item 4)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negspace.cli import main
from negspace.detectors.ants import ANTS
from negspace.detectors.ants.recorder import StreamRecorder
from negspace.evaluation import EncodedSet, evaluate_stream
from negspace.testing import WorldMLLM, WorldTextEncoder, make_world, world_stream
from numerics import assert_same_selection, assert_scores_close, score_bound

pytestmark = pytest.mark.numerics  # float32 products compared through tests/numerics.py

# VSNL from batch 8 and an ENS update per 20 negatives: the first batches of a stream of 50-image
# batches are scored with both banks empty (NegLabel's score), the later ones with sentences.
SCHEDULE = {"min_candidates": 20, "vsnl_start": 8, "vsnl_every": 2, "groups": 10, "delta": 0.25}


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def corpus(world):
    return world.negatives(1000)


def build(world, corpus, **kw) -> ANTS:
    labels, features = corpus
    return ANTS.from_features(
        world.id_text_features,
        features,
        WorldTextEncoder(world),
        WorldMLLM(world),
        world.class_names,
        neg_labels=labels,
        **{**SCHEDULE, **kw},
    )


def scored_stream(det: ANTS, batches) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score the stream online (ended with finish_stream); features, scores and ids in stream order."""
    scores = np.concatenate(det.score_stream(batches))
    features = np.concatenate([b.features for b in batches])
    return features, scores, [str(p) for b in batches for p in b.images]


def by_sample(rows):
    out = {}
    for row in rows:
        out.setdefault(row["sample"], []).append(row)
    return out


def test_online_images_are_explained_with_the_space_that_scored_them(world, corpus):
    batches, _ = world_stream(world, "far", batch_size=50)
    det = build(world, corpus)
    det.keep_explanations(len(batches) * 50, top=3)  # every image: the early ones are among them
    features, scores, ids = scored_stream(det, batches)
    assert det.state.ens_count > 0 and det.state.vsnl_texts  # the final space has both banks
    rows = by_sample(det.explanation_rows(features, ids, scores, n_images=len(ids), top=3))
    assert {r["space"] for rs in rows.values() for r in rs} == {"scoring"}

    # Replay the stream with a second detector, stopping after each batch: its space then is the
    # one that scored the batch; it gives the scores that were reported, and the explanations.
    replay = build(world, corpus)
    replay.keep_explanations(0)
    early, final_cites_ens = 0, False
    for batch in batches:
        replay.score_features(batch.features, images=batch.images)
        ens_then, vsnl_then = set(replay.state.ens_texts), set(replay.state.vsnl_texts)
        names = [str(p) for p in batch.images]
        reported = np.asarray([rows[n][0]["score"] for n in names])
        assert_scores_close(replay.score_fixed(batch.features), reported, dim=world.dim)
        for name, truth in zip(names, replay.explain(batch.features, top=3), strict=False):
            got = rows[name]
            assert [(r["text"], r["source"]) for r in got] == [(t, s) for t, s, _ in truth]
            assert_scores_close([r["weight"] for r in got], [w for _, _, w in truth], dim=world.dim)
            cited = {r["text"] for r in got}
            assert not cited & (set(det.state.ens_texts) - ens_then)  # no sentence written after the image
            assert not cited & (set(det.state.vsnl_texts) - vsnl_then)
        if not ens_then and not vsnl_then:  # scored as NegLabel: only corpus words explain it
            early += len(names)
            assert {r["source"] for n in names for r in rows[n]} == {"corpus"}
            assert all(sum(r["weight"] for r in rows[n]) <= 1.0 for n in names)
            final_cites_ens |= any(s == "ens" for e in det.explain(batch.features, top=3) for _, s, _ in e)
    assert early >= 100
    assert final_cites_ens  # what the final space would have said of those images (the old defect)


def test_kept_explanations_are_bounded_and_the_rest_say_final(world, corpus):
    batches, _ = world_stream(world, "mixed", batch_size=50)
    det = build(world, corpus)
    det.keep_explanations(5, top=2)
    sizes = []
    for batch in batches:
        det.score_features(batch.features, images=batch.images)
        sizes.append(len(det.kept_explanations))
    assert max(sizes) <= 10 and len(batches) * 50 > 100 * max(sizes)  # 2 x 5 at most, whatever the stream
    for batch in batches:  # the stream again, with no reset: still no more than the bound
        det.score_features(batch.features, images=batch.images)
        assert len(det.kept_explanations) <= 10
    det.finish_stream()

    det.reset()  # a fresh stream: the five lowest are explained with their space, the rest with the final one
    features, scores, ids = scored_stream(det, batches)
    rows = by_sample(det.explanation_rows(features, ids, scores, n_images=8, top=2))
    lowest = [ids[i] for i in np.argsort(scores, kind="stable")[:8]]
    assert [rows[n][0]["space"] for n in lowest] == ["scoring"] * 5 + ["final"] * 3
    assert all(len(rows[n]) == 2 for n in lowest)
    # more texts than were kept: the final space explains every image, and says so
    wider = det.explanation_rows(features, ids, scores, n_images=3, top=4)
    assert {r["space"] for r in wider} == {"final"} and len(wider) == 12


def test_a_space_that_did_not_change_explains_as_the_scoring_space(world, corpus):
    far, _ = world_stream(world, "far", batch_size=50)
    det = build(world, corpus, two_pass=True)
    features, scores, ids = scored_stream(det, far)
    rows = det.explanation_rows(features, ids, scores, n_images=10, top=3)
    assert {r["space"] for r in rows} == {"scoring"}
    assert [r["text"] for r in rows[:3]] == [t for t, _, _ in det.explain(features[np.argmin(scores)][None], top=3)[0]]
    # a second two-pass stream with no reset changes the space: the first one's images now say final
    near, _ = world_stream(world, "near", batch_size=50)
    before = det.state.vsnl_version
    det.score_stream(near)
    assert det.state.vsnl_version != before
    assert {r["space"] for r in det.explanation_rows(features, ids, scores, n_images=10, top=3)} == {"final"}
    det.forget_explained()
    det.freeze()  # a frozen space scores, never changes
    features, scores, ids = scored_stream(det, near)
    assert {r["space"] for r in det.explanation_rows(features, ids, scores, n_images=10, top=3)} == {"scoring"}


def test_keep_explanations_rejects_bad_sizes(world, corpus):
    det = build(world, corpus)
    for images, top in ((-1, 5), (5, 0)):
        with pytest.raises(ValueError, match="capacity >= 0 and top >= 1"):
            det.keep_explanations(images, top)


def _world_set(world, name: str, features: np.ndarray, labels: np.ndarray) -> EncodedSet:
    return EncodedSet(name, features, [f"{name}/{c}_{i}.png" for i, c in enumerate(labels)])


def test_sequential_segments_are_each_explained_with_their_own_space(world, corpus):
    """The stream protocol with the run's recorder: the segments of a sequential stream share the
    detector (no reset), and each one's lowest images are explained with the space that scored them."""
    id_set = _world_set(world, "id", world.id_image_features, world.id_image_labels)
    ood = [
        _world_set(world, "far", world.far_ood_features, world.far_ood_concept),
        _world_set(world, "near", world.near_ood_features, world.near_ood_concept),
    ]
    det = build(world, corpus)
    det.keep_explanations(20)
    recorder = StreamRecorder(None, n_explained=20)
    evaluate_stream(det, id_set, ood, batch_size=50, pass_images=True, after_stream=recorder, mode="sequential")
    assert {r["ood_set"] for r in recorder.explanation_rows} == {"far", "near"}
    assert {r["space"] for r in recorder.explanation_rows} == {"scoring"}
    assert recorder.final_space_explained == {"far": 0, "near": 0}
    assert not any("final negative space" in line for line in recorder.shortfalls())

    # Without the recorder's forget between segments the near segment's lowest images would have
    # been pushed out by the far segment's; kept for fewer images, some rows say final, and the
    # run's messages say so.
    det.keep_explanations(2)
    recorder = StreamRecorder(None, n_explained=20)
    evaluate_stream(det, id_set, ood, batch_size=50, pass_images=True, after_stream=recorder, mode="sequential")
    assert recorder.final_space_explained == {"far": 18, "near": 18}
    assert sum("final negative space" in line for line in recorder.shortfalls()) == 2


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory) -> dict[str, Path]:
    """ID: 7 plain colour images; OOD: 6 noise images; three class names."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "id").mkdir()
    (root / "ood").mkdir()
    for k in range(7):
        colour = np.zeros((40, 48, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(colour).save(root / "id" / f"img_{k}.png")
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / "ood" / f"noise_{k}.png")
    (root / "classes.txt").write_text("red square\ngreen square\nblue square\n", encoding="utf-8")
    return {"id": root / "id", "ood": root / "ood", "classes": root / "classes.txt"}


def _model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


def test_eval_explanations_never_cite_sentences_written_after_the_stream(
    tmp_path, image_sets, tiny_openclip, mllm_server, capsys
):
    """The issue's run: an online stream too short for an ENS update scores every image with no
    sentence (the leftovers are described at its end); explanations.csv cites none."""
    server, _ = mllm_server
    out = tmp_path / "ants"
    code = main(
        [
            "eval",
            "--method",
            "ants",
            "--classes",
            str(image_sets["classes"]),
            "--id",
            str(image_sets["id"]),
            "--ood",
            f"noise={image_sets['ood']}",
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--num-negatives",
            "500",
            "--ants-schedule",
            "scaled",
            "--explanations",
            "13",
            "--mllm",
            server.spec,
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    info = json.loads((out / "metrics.json").read_text())["ants"]["noise"]
    # the only ENS update is the leftovers' at the end (fewer negatives than one update needs)
    assert info["ens_size"] >= 1 and info["ens_updates"] == 1 and info["negatives_mined"] < 10
    sentences = json.loads((out / "negative_space" / "noise" / "state.json").read_text())["ens_texts"]
    with (out / "explanations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len({r["sample"] for r in rows}) == 13 and {r["space"] for r in rows} == {"scoring"}
    assert not {r["text"] for r in rows} & set(sentences) and "ens" not in {r["source"] for r in rows}
    printed = capsys.readouterr()
    assert "final negative space" not in printed.out + printed.err


def test_explain_matches_a_literal_restatement(world, corpus):
    """Per bank, each text's softmax mass over ID ∪ bank times the bank's share of the fused score;
    the ``top`` largest over every bank (a full stable sort: ties to the earlier text)."""
    batches, _ = world_stream(world, "mixed", batch_size=50)
    det = build(world, corpus, two_pass=True)
    det.score_stream(batches)
    images = np.concatenate([world.far_ood_features[:20], world.near_ood_features[:20], world.id_image_features[:20]])
    lam = det.lam
    banks = [
        ("ens", det.state.ens_bank, det.state.ens_texts, lam),
        ("vsnl", det.state.vsnl_bank, det.state.vsnl_texts, 1.0 - lam),
    ]
    assert all(len(texts) for _, _, texts, _ in banks)
    for image, got in zip(images, det.explain(images, top=4), strict=False):
        v = image.astype(np.float64) / np.linalg.norm(image)
        id_exp = np.exp(world.id_text_features.astype(np.float64) @ v / det.config.tau)
        key, at = [], {}  # every text of every bank in order, its weight in float64, and its positions
        for name, bank, texts, share in banks:
            bank_exp = np.exp(bank.astype(np.float64) @ v / det.config.tau)
            for text, weight in zip(texts, share * bank_exp / (id_exp.sum() + bank_exp.sum()), strict=True):
                at.setdefault((text, name), []).append(len(key))
                key.append(weight)
        key = np.asarray(key)
        want = np.argsort(-key, kind="stable")[:4]
        picked = [at[(t, s)].pop(0) for t, s, _ in got]
        # float32 weights against float64: the same texts in the same order but for near-ties
        bound = float(score_bound(key, tau=det.config.tau, dim=world.dim).max())
        assert_same_selection(picked, want, key, bound=bound, descending=True)
        assert_scores_close([w for _, _, w in got], key[picked], tau=det.config.tau, dim=world.dim)
