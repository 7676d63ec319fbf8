"""``bench`` compares with the published numbers only like with like: the papers' sets at their
counts, the published backbone (architecture and weights) and protocol (batch size and stream of
the test-time methods, the table's FPR95 convention); otherwise it says which of these differ."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from negspace.bench import BenchConfig, run_suite
from negspace.bench.compare import (
    Difference,
    ModelRecord,
    RunFacts,
    compare_run,
    console_summary,
    identify_backbone,
    markdown,
    run_differences,
    verdict_lines,
)
from negspace.bench.miniature import write_miniature
from negspace.bench.suites import load_suite
from negspace.cli import main
from negspace.errors import NegspaceError
from negspace.runconfig import ModelConfig

OPENAI_VIT_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"  # openai/CLIP's URL
VIT_B16 = ModelRecord("openclip:ViT-B-16/openai", "hub:ViT-B-16/openai@0123456789abcdef")


def _evaluation(fpr95_ood: float, auroc: float, sets: list[str]) -> SimpleNamespace:
    """What the comparison reads of an Evaluation: per OOD set, its metrics (fractions)."""
    result = SimpleNamespace(fpr95_ood=fpr95_ood, fpr95=fpr95_ood / 2, auroc=auroc)
    return SimpleNamespace(results=dict.fromkeys(sets, result))


def _model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


@pytest.mark.parametrize(
    "record, expected",
    [
        (VIT_B16, "CLIP ViT-B/16"),
        (ModelRecord("openclip:ViT-B/16/openai", "hub:ViT-B-16/openai@abc"), "CLIP ViT-B/16"),
        (ModelRecord("hf:openai/clip-vit-base-patch16", "hub:openai/clip-vit-base-patch16@abc"), "CLIP ViT-B/16"),
        (
            ModelRecord("openclip:ViT-B-16/openai", f"sha256:{OPENAI_VIT_B16_SHA256}", "/models/ViT-B-16.pt"),
            "CLIP ViT-B/16",
        ),
        # OpenAI's file under a spec without QuickGELU is not the published model
        (ModelRecord("openclip:ViT-B-16/none", f"sha256:{OPENAI_VIT_B16_SHA256}", "/models/ViT-B-16.pt"), None),
        (ModelRecord("openclip:ViT-B-16/openai", "sha256:" + "0" * 64, "/models/mine.pt"), None),  # unverified
        (ModelRecord("hf:openai/clip-vit-base-patch16", "dir-sha256:" + "1" * 64, "/models/hf"), None),
        (ModelRecord("openclip:ViT-B-16/laion2b_s34b_b88k", "hub:ViT-B-16/laion2b_s34b_b88k@abc"), None),
        (
            ModelRecord("openclip:ViT-B-16/openai", "hub:ViT-B-16/laion2b_s34b_b88k@abc"),
            None,
        ),  # spec and weights disagree
        (
            ModelRecord(
                "openclip:hf-hub:timm/vit_base_patch16_clip_224.openai", "hub:timm/vit_base_patch16_clip_224.openai@a"
            ),
            "CLIP ViT-B/16",
        ),
        (ModelRecord("openclip:/tmp/negspace-tiny-clip.json/none", "sha256:" + "2" * 64, "/tmp/tiny.pt"), None),
    ],
)
def test_the_published_backbone_is_recognised_by_spec_and_weights_only(record, expected):
    match = identify_backbone(record)
    assert match.name == expected, match.how
    if record.weights and expected is None:
        assert "unverified" in match.how or "not as published" in match.how


def test_the_papers_sets_backbone_and_protocol_are_compared_with_their_difference():
    suite = load_suite("imagenet10-20")
    run = suite.runs[0]
    sets = [s.name for s in run.ood]
    facts = RunFacts((), VIT_B16, batch_size=suite.protocol.batch_size, test_time=frozenset({"AdaNeg"}))
    assert run_differences(suite, facts) == []
    table = compare_run(
        suite,
        run,
        {"mcm": _evaluation(0.3, 0.9, sets), "adaneg": _evaluation(0.2, 0.95, sets)},
        run_differences(suite, facts),
    )
    cell = table.cells["MCM"][("ImageNet-20", "FPR95")]
    assert cell.compared and cell.published is not None and cell.difference == pytest.approx(30.0 - cell.published)
    assert table.comparable and table.applying() == [] and verdict_lines([])[0].startswith("Comparable")
    text = markdown(table, VIT_B16.short())
    assert "| MCM | ours | openclip:ViT-B-16/openai |" in text and "|  | published | CLIP ViT-B/16 |" in text
    assert f"| Δ |  | {cell.difference:+.2f} |" in text
    assert f"Δ {cell.difference:+.2f}" in console_summary(table)


def test_a_batch_size_other_than_the_papers_keeps_only_the_test_time_methods_apart():
    suite = load_suite("imagenet10-20")
    run = suite.runs[0]
    sets = [s.name for s in run.ood]
    facts = RunFacts((), VIT_B16, batch_size=4, test_time=frozenset({"AdaNeg"}))
    differences = run_differences(suite, facts)
    assert differences == [Difference("batch size", "4", "256", methods=("AdaNeg",))]
    table = compare_run(
        suite, run, {"mcm": _evaluation(0.3, 0.9, sets), "adaneg": _evaluation(0.2, 0.95, sets)}, differences
    )
    assert all(c.compared for c in table.cells["MCM"].values() if c.published is not None)
    assert not any(c.compared for c in table.cells["AdaNeg"].values())
    assert not table.comparable and table.applying() == differences
    text = markdown(table)
    assert "| AdaNeg | ours |" in text and "|  | published (reference) | CLIP ViT-B/16 |" in text
    assert verdict_lines(differences)[1].strip() == "batch size: ours 4, published 256 (AdaNeg)"
    assert "a reference only" in console_summary(table)


def test_a_table_with_another_fpr95_convention_or_no_stated_backbone_is_a_reference_there():
    """NegRefine's README takes ID as positive: its FPR95 cells are kept apart, its AUROC compared;
    the TANL abstract names no backbone: its cell is a reference even with ViT-B/16."""
    suite = load_suite("imagenet")
    run = suite.runs[0]
    sets = [s.name for s in run.ood]
    facts = RunFacts((), VIT_B16, batch_size=256, test_time=frozenset({"TANL"}))
    differences = run_differences(suite, facts)
    assert [d.what for d in differences] == ["backbone", "FPR95 convention", "FPR95 convention"]
    assert differences[0].published == "not stated (TANL abstract/abstract)"
    table = compare_run(
        suite, run, {"negrefine": _evaluation(0.2, 0.95, sets), "tanl": _evaluation(0.1, 0.97, sets)}, differences
    )
    negrefine = table.cells["NegRefine"]
    assert negrefine[("SUN", "AUROC")].compared and not negrefine[("SUN", "FPR95")].compared
    assert negrefine[("SUN", "FPR95")].published is not None and negrefine[("SUN", "FPR95")].difference is None
    assert not table.cells["TANL"][("Average", "FPR95")].compared
    assert table.backbone_of("TANL") == "not stated"
    texts = [d.text() for d in table.applying()]
    assert "FPR95 convention: ours fpr95_ood" in texts[1] and "NegRefine README/four sets, FPR95 only" in texts[1]
    assert len(texts) == 2  # TINS's README has no row beside ours: its convention is not a difference here


@pytest.fixture(scope="module")
def papers_counts(tmp_path_factory) -> Path:
    """imagenet10-20 at the papers' counts (500 and 1,000 generated images)."""
    return write_miniature(load_suite("imagenet10-20"), tmp_path_factory.mktemp("counts"), per_set=None)


def test_a_random_model_on_the_papers_sets_is_not_comparable_and_says_why(
    tmp_path, papers_counts, tiny_openclip, capsys
):
    """The issue's run: the papers' sets at their counts, a random tiny model and a batch size other than 256;
    a --limit above every set's size samples nothing, so it is no subset."""
    out = tmp_path / "out"
    assert (
        main(
            [
                "bench",
                "--suite",
                "imagenet10-20",
                "--data-root",
                str(papers_counts),
                "--method",
                "mcm,adaneg",
                "--limit",
                "1000000",
                "--batch-size",
                "64",
                "--out",
                str(out),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["papers_sets"] and not summary["subset"] and summary["not_papers_sets_because"] == []
    assert summary["comparable"] is False and [d["what"] for d in summary["differences"]] == ["backbone", "batch size"]
    assert summary["published_protocol"]["batch_size"] == 256 and summary["test_time_methods"] == ["AdaNeg"]
    backbone = "backbone: ours openclip:negspace-tiny-clip.json/none"
    batch = "batch size: ours 64, published 256 (AdaNeg)"
    markdown_text = (out / "results.md").read_text()
    report = (out / "report.html").read_text()
    first = report[report.index("id='comparison'") : report.index("<table class='facts'>")]
    for where in (printed, markdown_text, first):
        assert "Not comparable with the published numbers" in where and backbone in where and batch in where
        assert "subset" not in where and "unverified" in where
    assert "scored in batches of 64" in markdown_text and "(the papers: batches of 256)" in markdown_text
    assert "class='delta'" not in report and "| Δ |" not in markdown_text
    with (out / "results.csv").open(encoding="utf-8") as handle:
        assert {row["compared"] for row in csv.DictReader(handle)} == {"False"}


def test_a_run_of_the_published_backbone_and_protocol_is_comparable_and_shows_the_difference(
    tmp_path, papers_counts, tiny_openclip
):
    """The same sets through the Python API with the papers' batch size and an encoder that records
    itself as OpenAI's ViT-B/16 from the hub (the tiny model relabelled: what is tested is the
    comparison, not the numbers): every published cell beside ours is compared, with its Δ."""
    from negspace.runs import load_model

    encoder = load_model(ModelConfig(tiny_openclip.spec, tiny_openclip.weights, device="cpu", progress=False))
    encoder.spec, encoder.fingerprint = VIT_B16.spec, VIT_B16.fingerprint
    result = run_suite(
        BenchConfig("imagenet10-20", methods=("mcm",)),
        data_root=papers_counts,
        encoder=encoder,
        model=ModelConfig(device="cpu", progress=False),
        out=tmp_path / "out",
    )
    assert result.comparable and result.differences == []
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["comparable"] is True and summary["differences"] == []
    assert summary["backbone"]["published_as"] == "CLIP ViT-B/16"
    with (tmp_path / "out" / "results.csv").open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "MCM" and r["published"] != ""]
    assert rows and all(r["compared"] == "True" for r in rows)
    for row in rows:
        assert float(row["difference"]) == pytest.approx(float(row["ours"]) - float(row["published"]), abs=1e-3)
    markdown_text = (tmp_path / "out" / "results.md").read_text()
    assert "**Comparable with the published numbers" in markdown_text and "| Δ |" in markdown_text
    report = (tmp_path / "out" / "report.html").read_text()
    assert "class='delta'" in report and "class='banner'" not in report


def test_bench_errors_name_python_arguments_from_python_and_options_on_the_command_line(
    tmp_path, miniatures_1020, capsys
):
    missing = tmp_path / "nope"
    cases = [
        (
            BenchConfig("imagenet10-20"),
            missing,
            ["--suite", "imagenet10-20", "--data-root", str(missing)],
            f"data_root {missing} is not a folder.",
            f"--data-root {missing} is not a folder.",
        ),
        (
            BenchConfig("imagenet10-20"),
            miniatures_1020,
            ["--suite", "imagenet10-20", "--data-root", str(miniatures_1020)],
            "check_counts=False runs with other counts",
            "--no-count-check runs with other counts",
        ),
        (
            BenchConfig("nope"),
            miniatures_1020,
            ["--suite", "nope", "--data-root", str(miniatures_1020)],
            "suite: unknown suite 'nope'",
            "--suite: unknown suite 'nope'",
        ),
    ]
    for config, root, options, python_text, cli_text in cases:
        with pytest.raises(NegspaceError) as raised:
            run_suite(config, data_root=root)
        assert python_text in str(raised.value) and "--" not in str(raised.value).replace("`negspace bench --list`", "")
        assert main(["bench", *options, "--out", str(tmp_path / "out")]) == 2
        assert cli_text in capsys.readouterr().err
    with pytest.raises(NegspaceError, match=r"^limit must be a positive whole number, got 0\.$"):
        run_suite(BenchConfig("imagenet10-20", limit=0), data_root=miniatures_1020)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def miniatures_1020(tmp_path_factory) -> Path:
    return write_miniature(load_suite("imagenet10-20"), tmp_path_factory.mktemp("mini"), per_set=3)
