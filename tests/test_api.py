"""The Python run API does what the command line does: evaluate, run_suite, score_collection,
and configs per method."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

import negspace
from fixtures_models import TINY_DIM
from negspace import (
    AdaNegConfig,
    BenchConfig,
    CollectionConfig,
    EvalConfig,
    MCMConfig,
    ModelConfig,
    NegLabel,
    NegLabelConfig,
    ScoreConfig,
    TANLConfig,
)
from negspace.bench.miniature import write_miniature
from negspace.bench.suites import load_suite
from negspace.cli import main
from negspace.corpus.mining import MiningConfig
from negspace.runconfig import NegativesConfig
from negspace.testing import make_world
from numerics import FEATURE_ERROR, assert_scores_close
from reference_metrics import assert_metrics


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(3)
    for name, count in (("id", 6), ("ood", 5)):
        (root / name).mkdir()
        for k in range(count):
            pixels = (
                np.zeros((32, 40, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
                if name == "id"
                else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            )
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    (root / "classes.txt").write_text("red\ngreen\nblue\n", encoding="utf-8")
    return root


@pytest.fixture
def model(tiny_openclip):
    return ModelConfig(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", progress=False)


def _cli_model(tiny_openclip) -> list[str]:
    return ["--model", tiny_openclip.spec, "--weights", str(tiny_openclip.weights), "--device", "cpu", "-q"]


def test_evaluate_gives_what_eval_writes_and_writes_nothing_without_out(tmp_path, sets, model, tiny_openclip):
    config = EvalConfig(
        "neglabel", NegLabelConfig(groups=5), negatives=NegativesConfig(MiningConfig(num_negatives=200))
    )
    before = set(tmp_path.rglob("*"))
    evaluation = negspace.evaluate(
        config, classes=sets / "classes.txt", id=sets / "id", ood={"noise": sets / "ood"}, model=model
    )
    assert set(tmp_path.rglob("*")) == before  # no out: no file
    assert isinstance(evaluation.detector, NegLabel) and evaluation.detector.config == NegLabelConfig(groups=5)
    out = tmp_path / "cli"
    assert (
        main(
            [
                "eval",
                "--method",
                "neglabel",
                "--classes",
                str(sets / "classes.txt"),
                "--id",
                str(sets / "id"),
                "--ood",
                f"noise={sets / 'ood'}",
                "--groups",
                "5",
                "--num-negatives",
                "200",
                "--out",
                str(out),
                *_cli_model(tiny_openclip),
            ]
        )
        == 0
    )
    written = json.loads((out / "metrics.json").read_text())
    assert written["ood"]["noise"] == pytest.approx(evaluation.results["noise"].as_dict())
    assert written["params"] == evaluation.info["params"] and evaluation.ood_scores["noise"].shape == (5,)


def test_evaluate_writes_the_eval_files_with_out_and_takes_a_loaded_encoder(tmp_path, sets, model):
    from negspace.runs import load_model

    encoder = load_model(model)
    evaluation = negspace.evaluate(
        EvalConfig("mcm", MCMConfig(temperature=0.5)),
        classes=["red", "green", "blue"],
        id=sets / "id",
        ood=[f"noise={sets / 'ood'}"],
        encoder=encoder,
        out=tmp_path / "o",
    )
    assert {"metrics.json", "results.csv", "scores.csv"} <= {p.name for p in (tmp_path / "o").iterdir()}
    assert evaluation.info["params"]["temperature"] == 0.5 and evaluation.info["model"] == encoder.spec
    with pytest.raises(negspace.NegspaceError, match="not empty"):
        negspace.evaluate(
            EvalConfig("mcm"),
            classes=["a", "b"],
            id=sets / "id",
            ood={"n": sets / "ood"},
            encoder=encoder,
            out=tmp_path / "o",
        )


def test_a_test_time_method_runs_its_stream_protocol_from_python(sets, model):
    config = EvalConfig(
        "tanl",
        TANLConfig(beta=50, queue_length=4, otsu_window=40),
        stream="sequential",
        batch_size=4,
        tanl_corpus="neglabel",
    )
    evaluation = negspace.evaluate(
        config, classes=sets / "classes.txt", id=sets / "id", ood={"a": sets / "ood", "b": sets / "ood"}, model=model
    )
    assert evaluation.info["stream"]["mode"] == "sequential" and set(evaluation.results) == {"a", "b"}
    assert evaluation.detector.state_.batches > 0


def test_run_suite_runs_every_method_asked_for(tmp_path, model):
    write_miniature(load_suite("imagenet10-20"), tmp_path / "data", per_set=3)
    result = negspace.run_suite(
        BenchConfig(
            "imagenet10-20",
            methods=("mcm", "adaneg"),
            check_counts=False,
            batch_size=2,
            params={"adaneg": AdaNegConfig(memory_length=3)},
        ),
        data_root=tmp_path / "data",
        model=model,
    )
    assert result.out is None and not (tmp_path / "runs").exists()
    run = result.evaluations["imagenet10"]
    assert set(run) == {"mcm", "adaneg"} and run["adaneg"].info["params"]["memory_length"] == 3
    mcm = run["mcm"]  # its metrics are those of its scores, computed apart from negspace
    assert_metrics(mcm.results["imagenet20"], mcm.id_scores, mcm.ood_scores["imagenet20"])
    assert result.pages and result.pages[0].comparison.run.name == "imagenet10"


@pytest.mark.numerics
def test_score_collection_writes_one_row_per_image(tmp_path, sets, model):
    evaluation = negspace.evaluate(
        EvalConfig("mcm"),
        classes=sets / "classes.txt",
        id=sets / "id",
        ood={"n": sets / "ood"},
        model=model,
        save_detector_to=tmp_path / "det",
    )
    assert evaluation.info["saved_detector"] == str(tmp_path / "det")
    summary = negspace.score_collection(
        [sets / "ood"],
        tmp_path / "rows",
        ScoreConfig(detector=tmp_path / "det"),
        collection=CollectionConfig(chunk_size=2, batch_size=2),
    )
    rows = ds.dataset(tmp_path / "rows", format="parquet").to_table().to_pylist()
    assert summary["scored"] == len(rows) == 5 and summary["model"] == model.spec  # the detector's own model
    # MCM on the images encoded again, in other batches: the evaluation's scores within the float32 bound
    by_path = dict(zip(evaluation.ood_sets[0].sample_ids, evaluation.ood_scores["n"], strict=False))
    got = {r["path"]: r["score"] for r in rows}
    assert got.keys() == by_path.keys()
    assert_scores_close(
        [got[p] for p in by_path],
        list(by_path.values()),
        tau=MCMConfig().temperature,
        dim=TINY_DIM,
        feature_error=FEATURE_ERROR,
    )
    again = negspace.score_collection([sets / "ood"], tmp_path / "rows", ScoreConfig(detector=tmp_path / "det"))
    assert again["already_written"] == 5 and again["scored"] == 0


def test_a_detector_takes_its_config_or_keywords_and_saves_it(tmp_path):
    world = make_world(n_corpus=300, n_classes=5, n_per_class=4, n_per_concept=4)
    _, negatives = world.negatives(100)
    by_config = NegLabel.from_features(world.id_text_features, negatives, NegLabelConfig(groups=4, seed=2))
    by_keywords = NegLabel.from_features(world.id_text_features, negatives, groups=4, seed=2)
    assert by_config.config == by_keywords.config == NegLabelConfig(groups=4, seed=2)
    np.testing.assert_array_equal(
        by_config.score_features(world.far_ood_features), by_keywords.score_features(world.far_ood_features)
    )
    with pytest.raises(TypeError, match="no field 'grups'"):
        NegLabel.from_features(world.id_text_features, negatives, grups=4)
    with pytest.raises(ValueError, match="tau must be positive"):
        NegLabelConfig(tau=0)
    by_config.save(tmp_path / "d")
    saved = json.loads((tmp_path / "d" / "detector.json").read_text())
    assert saved["params"] == asdict(by_config.config)
    assert negspace.load_detector(tmp_path / "d").config == by_config.config
