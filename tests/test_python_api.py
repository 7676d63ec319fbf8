"""Python is first-class: every form of ``ood`` a Python user would pass, errors that name the
arguments a Python caller typed (the command line names its options), short ``repr()`` of
results, configs and detectors, and every method importable from ``negspace``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import negspace
from fewshot_world import prototypes_of, rotating_inverter
from negspace import EvalConfig, MCMConfig, ModelConfig
from negspace.cli import main
from negspace.corpus.mining import MinedNegatives
from negspace.errors import DatasetError, NegspaceError
from negspace.methods import METHODS
from negspace.testing import WorldMLLM, WorldTextEncoder, make_world, world_stream

MAX_REPR_LINES = 3
MAX_REPR_CHARS = 400


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("python_api")
    rng = np.random.default_rng(5)
    for name, count in (("id", 6), ("noise", 4), ("more_noise", 3)):
        (root / name).mkdir()
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


@pytest.fixture
def model(tiny_openclip):
    return ModelConfig(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", progress=False)


def _evaluate(sets, model, ood):
    return negspace.evaluate(
        EvalConfig("mcm", MCMConfig()), classes=["red", "green", "blue"], id=sets / "id", ood=ood, model=model
    )


@pytest.mark.parametrize("form", ["str", "path", "paths", "pairs", "strings", "mapping"])
def test_ood_takes_one_path_a_sequence_of_named_sets_or_a_mapping(sets, model, form):
    noise, more = sets / "noise", sets / "more_noise"
    ood = {
        "str": str(noise),
        "path": noise,
        "paths": [noise, more],
        "pairs": [("a", noise), ("b", str(more))],
        "strings": [f"a={noise}", str(more)],
        "mapping": {"a": noise, "b": more},
    }[form]
    evaluation = _evaluate(sets, model, ood)
    expected = {
        "str": ["noise"],
        "path": ["noise"],
        "paths": ["noise", "more_noise"],
        "pairs": ["a", "b"],
        "strings": ["a", "more_noise"],
        "mapping": ["a", "b"],
    }[form]
    assert list(evaluation.results) == expected  # a path alone is one set named by its folder
    sizes = {"noise": 4, "more_noise": 3, "a": 4, "b": 3}
    assert [len(evaluation.ood_scores[name]) for name in expected] == [sizes[name] for name in expected]


@pytest.mark.parametrize("ood", [5, [5], {3.0}, [("a", "b", "c")]])
def test_any_other_ood_is_a_type_error_saying_what_is_accepted(sets, ood):
    # refused before the model loads: no model is given, and none is needed to refuse
    with pytest.raises(
        TypeError, match=r"ood must be a mapping of names to sets, a sequence of named sets .* or one path"
    ):
        negspace.evaluate(
            EvalConfig("mcm"), classes=["a", "b"], id=sets / "id", ood=ood, model=ModelConfig("openclip:not-loaded")
        )


def test_a_missing_set_names_its_argument_in_python_and_its_option_on_the_command_line(sets, tmp_path, capsys):
    with pytest.raises(DatasetError) as raised:
        negspace.evaluate(EvalConfig("mcm"), classes=["a", "b"], id=sets / "id", ood={"nope": tmp_path / "nope"})
    assert str(raised.value).startswith("ood['nope']: the image set ") and "--" not in str(raised.value)
    with pytest.raises(DatasetError, match=r"^id: the image set .*missing does not exist"):
        negspace.evaluate(EvalConfig("mcm"), classes=["a", "b"], id=tmp_path / "missing", ood=[sets / "noise"])
    assert (
        main(
            [
                "eval",
                "--method",
                "mcm",
                "--classes",
                "imagenet",
                "--id",
                str(sets / "id"),
                "--ood",
                f"nope={tmp_path / 'nope'}",
                "-q",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("negspace: error: --ood nope: the image set ")
    assert (
        main(
            [
                "eval",
                "--method",
                "mcm",
                "--classes",
                "imagenet",
                "--id",
                str(tmp_path / "missing"),
                "--ood",
                str(sets / "noise"),
                "-q",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("negspace: error: --id: the image set ")


def _assert_short(text: str, what: str) -> None:
    assert len(text.splitlines()) <= MAX_REPR_LINES and len(text) <= MAX_REPR_CHARS, f"{what}: {text[:600]}"
    assert "array([" not in text and "tensor(" not in text, what


def test_repr_of_a_result_shows_counts_and_metrics_never_arrays(sets, model):
    evaluation = _evaluate(sets, model, {"a": sets / "noise", "b": sets / "more_noise"})
    text = repr(evaluation)
    _assert_short(text, "Evaluation")
    assert "method='mcm'" in text and "a: 4" in text and "b: 3" in text and "6 images" in text
    assert f"auroc={evaluation.average()['auroc']:.4f}" in text
    _assert_short(repr(evaluation.id_set), "EncodedSet")
    assert "shape=(6, " in repr(evaluation.id_set)


def test_repr_of_ten_thousand_labels_and_a_thousand_class_names_is_a_count():
    labels = [f"label {k}" for k in range(10_000)]
    mined = MinedNegatives(labels, np.zeros((10_000, 512), np.float32), 7_000, 3_000)
    _assert_short(repr(mined), "MinedNegatives")
    assert "<10000 list items>" in repr(mined) and "shape=(10000, 512)" in repr(mined)
    imagenet = negspace.load_class_names("imagenet")
    _assert_short(repr(imagenet), "ClassList")
    assert "<1000 tuple items>" in repr(imagenet)


def test_repr_of_every_config_is_short():
    for name, spec in METHODS.items():
        _assert_short(repr(spec.config()), name)
    for config in (
        negspace.EvalConfig("ants"),
        negspace.BenchConfig("imagenet"),
        negspace.ModelConfig(),
        negspace.ScoreConfig(method="mcm", classes="imagenet"),
    ):
        _assert_short(repr(config), type(config).__name__)


def test_repr_of_every_detector_after_learning_is_short():
    world = make_world(dim=32, n_classes=12, n_corpus=700, seed=2)
    labels = [f"neg{j}" for j in range(600)]
    bank = world.corpus_features[:600]
    inverter = rotating_inverter(world, seed=1, strength=0.3)
    noise = np.random.default_rng(0).standard_normal((12, world.dim)).astype(np.float32)
    detectors = [
        negspace.MCM.from_features(world.id_text_features),
        negspace.NegLabel(world.id_text_features, bank, groups=10, neg_labels=labels),
        negspace.CSP(world.id_text_features, bank, groups=10, neg_labels=labels),
        negspace.TANL.from_features(
            world.id_text_features, world.corpus_features, noise, queue_length=20, beta=100, otsu_window=100
        ),
        negspace.AdaNeg.from_features(world.id_text_features, bank, memory_length=4, neg_labels=labels),
        negspace.ANTS.from_features(
            world.id_text_features,
            bank,
            WorldTextEncoder(world),
            WorldMLLM(world),
            world.class_names,
            neg_labels=labels,
            min_candidates=20,
            groups=10,
        ),
        negspace.InterNeg.from_features(
            world.id_text_features, bank, prototypes_of(world), learned=30, neg_labels=labels, inverter=inverter
        ),
        negspace.TINS.from_features(
            world.id_text_features, bank, prototypes_of(world), learned=30, neg_labels=labels, inverter=inverter
        ),
    ]
    batches, _ = world_stream(world, "mixed", seed=1, batch_size=50)
    for detector in detectors:
        if hasattr(detector, "score_stream"):
            detector.score_stream(batches)
        text = repr(detector)
        _assert_short(text, type(detector).__name__)
        assert text.startswith(type(detector).__name__ + "(")


def test_every_method_and_its_config_is_importable_from_negspace():
    for spec in METHODS.values():
        detector = getattr(negspace, spec.detector.__name__)
        config = getattr(negspace, spec.config.__name__)
        assert detector is spec.detector and config is spec.config
        assert spec.detector.__name__ in negspace.__all__ and spec.config.__name__ in negspace.__all__


def test_the_package_description_names_all_nine_methods():
    from importlib.metadata import metadata

    summary = metadata("negspace")["Summary"]
    for spec in METHODS.values():
        assert spec.detector.__name__ in summary and spec.detector.__name__ in negspace.__doc__


def test_option_errors_name_config_fields_in_python_and_options_on_the_command_line(sets, capsys):
    from negspace import NegLabelConfig
    from negspace.corpus.mining import MiningConfig
    from negspace.runconfig import NegativesConfig

    too_many = EvalConfig(
        "neglabel", NegLabelConfig(groups=500), negatives=NegativesConfig(MiningConfig(num_negatives=200))
    )
    with pytest.raises(NegspaceError) as raised:
        negspace.evaluate(too_many, classes=["a", "b"], id=sets / "id", ood=[sets / "noise"])
    assert str(raised.value) == (
        "NegLabelConfig.groups 500 is larger than the 200 negative labels of negatives.mining.num_negatives."
    )
    with pytest.raises(NegspaceError, match=r"^InterNeg and TINS need .*: pass id_shots \(a folder"):
        negspace.evaluate(EvalConfig("interneg"), classes=["a", "b"], id=sets / "id", ood=[sets / "noise"])
    base = ["eval", "--classes", "imagenet", "--id", str(sets / "id"), "--ood", str(sets / "noise"), "-q"]
    assert main([*base, "--method", "neglabel", "--groups", "500", "--num-negatives", "200"]) == 2
    assert capsys.readouterr().err == (
        "negspace: error: --groups 500 is larger than the 200 negative labels of --num-negatives.\n"
    )
    assert main([*base, "--method", "tins"]) == 2
    assert ": pass --id-shots (a folder" in capsys.readouterr().err
