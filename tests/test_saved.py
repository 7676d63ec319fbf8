"""Saved detectors: every method as plain files, loaded back frozen, scoring exactly as saved."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negspace import load_detector
from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.tanl import TANL
from negspace.testing import make_world
from numerics import assert_same_ranking, assert_scores_close

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


@pytest.fixture(scope="module")
def world():
    return make_world(n_corpus=1500, n_classes=20, n_per_class=20, n_per_concept=60, seed=4)


def _stream(world):
    stream = np.concatenate([world.id_image_features, world.far_ood_features])
    return stream[np.random.default_rng(1).permutation(len(stream))]


def _builders(world):
    noise = np.random.default_rng(2).standard_normal((15, world.dim)).astype(np.float32)
    negatives = world.corpus_features[:600]
    return {
        "mcm": lambda: MCM.from_features(world.id_text_features, temperature=0.5),
        "neglabel": lambda: NegLabel.from_features(world.id_text_features, negatives, groups=6, seed=3),
        "tanl": lambda: TANL.from_features(
            world.id_text_features, world.corpus_features, noise, queue_length=25, beta=120, otsu_window=150
        ),
        "adaneg-task": lambda: AdaNeg.from_features(world.id_text_features, negatives, memory_length=4),
        "adaneg-sample": lambda: AdaNeg.from_features(
            world.id_text_features, negatives, memory_length=4, proxy="sample"
        ),
    }


@pytest.mark.parametrize("name", ["mcm", "neglabel", "tanl", "adaneg-task", "adaneg-sample"])
def test_a_loaded_detector_scores_exactly_as_the_saved_one(tmp_path, world, name):
    det = _builders(world)[name]()
    stream = _stream(world)
    for start in range(0, 200, 40):  # test-time detectors learn something first
        det.score_features(stream[start : start + 40])
    det.save(tmp_path / name)
    loaded = load_detector(tmp_path / name)
    assert type(loaded) is type(det) and loaded.get_params() == det.get_params()
    rest = stream[200:]
    if hasattr(det, "freeze"):
        assert loaded.frozen
        det.freeze()
    whole = det.score_features(rest)
    # the same code on the same shapes: bit for bit
    np.testing.assert_array_equal(loaded.score_features(rest), whole)
    # frozen: a pure function of each image, whatever the batch and its order; another batch
    # shape blocks the float32 products differently, so equal within the float32 bound
    halves = np.concatenate([loaded.score_features(rest[::2]), loaded.score_features(rest[1::2])])
    in_halves_order = np.concatenate([whole[::2], whole[1::2]])
    bound = {
        "tau": 0.5 if name == "mcm" else 0.01,
        "dim": world.dim,
        "weight": 1.1 if name.startswith("adaneg") else 1.0,
    }
    assert_scores_close(halves, in_halves_order, **bound)
    assert_same_ranking(halves, in_halves_order, **bound)


def test_saved_files_are_json_and_npy_only(tmp_path, world):
    det = _builders(world)["tanl"]()
    for start in range(0, 120, 40):
        det.score_features(_stream(world)[start : start + 40])
    folder = det.save(tmp_path / "tanl")
    assert {p.suffix for p in folder.iterdir()} == {".json", ".npy"}
    doc = json.loads((folder / "detector.json").read_text())
    assert doc["method"] == "tanl" and doc["format"] == "negspace-detector/1"
    rings = doc["extra"]["rings"]
    assert rings["id_queue"][0] + rings["ood_queue"][0] > 20 + 15  # the queues grew beyond their seeds
    assert np.load(folder / "pool_text_features.npy", allow_pickle=False).shape == world.corpus_features.shape


def test_an_unfrozen_loaded_detector_learns_on(tmp_path, world):
    det = _builders(world)["adaneg-task"]()
    det.save(tmp_path / "a")
    loaded = load_detector(tmp_path / "a")
    loaded.unfreeze()
    before = loaded.state_.filled.copy()
    loaded.score_features(_stream(world)[:80])
    assert loaded.state_.filled.sum() > before.sum()


def test_a_torch_loaded_detector_matches(tmp_path, world):
    det = _builders(world)["neglabel"]()
    det.save(tmp_path / "nl")
    on_torch = load_detector(tmp_path / "nl", backend="torch", device="cpu")
    batch = _stream(world)[:64]
    assert_scores_close(on_torch.score_features(batch), det.score_features(batch), dim=world.dim)


def test_loading_nothing_or_something_else_is_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="holds no saved detector"):
        load_detector(tmp_path)
    (tmp_path / "detector.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="is in format 'other/9'"):
        load_detector(tmp_path)
