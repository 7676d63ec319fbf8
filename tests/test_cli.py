"""``negspace`` end to end: real PNG files, a random-weight model loaded from disk, every output."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_models import TINY_DIM
from local_network import closed_port
from negspace.cli import main
from negspace.corpus.labelfile import read_label_file
from numerics import assert_scores_close
from reference_metrics import assert_metrics, read_scores_csv, reference, scores_of

OUTPUTS = ["metrics.json", "results.md", "results.csv", "scores.csv", "roc.png"]


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory) -> dict[str, Path]:
    """ID: 6 colour photos-to-be, one grayscale, one corrupt file; OOD: 6 noise images."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    id_dir, ood_dir = root / "id", root / "ood"
    (id_dir / "sub").mkdir(parents=True)
    ood_dir.mkdir()
    for k in range(6):
        colour = np.zeros((40, 48, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(colour).save(id_dir / ("sub" if k % 2 else ".") / f"img_{k}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), mode="L").save(id_dir / "gray.png")
    (id_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(ood_dir / f"noise_{k}.png")
    classes = root / "classes.txt"
    classes.write_text("red square\ngreen square\nblue square\n", encoding="utf-8")
    return {"id": id_dir, "ood": ood_dir, "classes": classes, "root": root}


def _model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


def _run_eval(tmp_path, image_sets, model, method: str, *extra: str) -> Path:
    out = tmp_path / method
    code = main(
        [
            "eval",
            "--method",
            method,
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
            *_model_args(model),
            *extra,
        ]
    )
    assert code == 0
    return out


def _check_outputs(out: Path, n_id: int, n_ood: int) -> dict:
    for name in [*OUTPUTS, "hist_noise.png"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with Image.open(out / "roc.png") as png:
        assert png.format == "PNG" and png.size[0] >= 300
    metrics = json.loads((out / "metrics.json").read_text())
    noise = metrics["ood"]["noise"]
    assert (noise["n_id"], noise["n_ood"]) == (n_id, n_ood)
    import torch

    import negspace

    assert (metrics["negspace_version"], metrics["torch_version"]) == (negspace.__version__, torch.__version__)
    assert metrics["command"][:3] == ["negspace", "eval", "--method"] and metrics["device"] == "cpu"
    rows = read_scores_csv(out / "scores.csv")
    assert len(rows) == n_id + n_ood
    assert sum(r["is_id"] == "1" for r in rows) == n_id
    _check_metrics_against_scores(out, rows, metrics)
    return metrics


def _check_metrics_against_scores(out: Path, rows: list[dict], metrics: dict) -> None:
    """metrics.json, results.md and results.csv say what the scores in scores.csv give, computed
    apart from negspace (scikit-learn's AUROC and AUPR, FPR95 from its definition)."""
    id_scores, ood_scores = scores_of(rows, "noise")
    assert_metrics(metrics["ood"]["noise"], id_scores, ood_scores, abs_tol=1e-9)  # 8 digits in scores.csv
    want = reference(id_scores, ood_scores)
    percent = [100 * want[k] for k in ("auroc", "fpr95", "fpr95_ood", "aupr_in")]
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| noise |")]
    assert len(table) == 1, table
    cells = [float(c) for c in table[0].strip("|").split("|")[1:5]]  # AUROC, FPR95 (ID+), FPR95 (OOD+), AUPR-In
    assert np.allclose(cells, percent, rtol=0, atol=0.005 + 1e-9), (table[0], percent)
    with (out / "results.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["ood_set"] == "noise")
    written = [float(row[k]) for k in ("auroc_percent", "fpr95_percent", "fpr95_ood_percent", "aupr_in_percent")]
    assert np.allclose(written, percent, rtol=0, atol=5e-5 + 1e-9), (row, percent)


def test_eval_mcm_on_png_folders_reports_the_corrupt_file(tmp_path, image_sets, tiny_openclip, capsys):
    out = _run_eval(tmp_path, image_sets, tiny_openclip, "mcm")
    metrics = _check_outputs(out, n_id=7, n_ood=6)  # 8 ID files, the corrupt one skipped
    skipped = metrics["skipped_files"]["id"]
    assert [Path(s["path"]).name for s in skipped] == ["corrupt.png"]
    assert metrics["n_skipped"] == 1 and metrics["method"] == "mcm"
    printed = capsys.readouterr().out
    assert "noise" in printed and "average" in printed and "1 unreadable file(s) skipped" in printed
    assert "corrupt.png" in (out / "results.md").read_text()
    assert "stream protocol" not in (out / "results.md").read_text()  # a static method scores images one by one


def test_mine_then_eval_neglabel(tmp_path, image_sets, tiny_openclip, capsys):
    labels = tmp_path / "labels.txt"
    code = main(["mine", "--classes", str(image_sets["classes"]), "-o", str(labels), *_model_args(tiny_openclip)])
    assert code == 0
    nouns, adjectives = read_label_file(labels)
    assert (len(nouns), len(adjectives)) == (8_265, 1_735)
    assert len(set(nouns + adjectives)) == 10_000
    assert not {"red square", "green square"} & set(nouns)

    out = _run_eval(tmp_path, image_sets, tiny_openclip, "neglabel", "--negatives", str(labels))
    metrics = _check_outputs(out, n_id=7, n_ood=6)
    assert metrics["params"]["n_negatives"] == 10_000 and metrics["params"]["groups"] == 100

    assert metrics["negatives_file"]["id_names_removed"] == 0 and not metrics["negatives_file"]["settings_mismatch"]

    # Mining inside eval (cached by now) gives the very same scores as the mined file.
    again = _run_eval(tmp_path / "again", image_sets, tiny_openclip, "neglabel")
    assert (again / "scores.csv").read_text() == (out / "scores.csv").read_text()

    # A file edited by hand: an ID name and a repeat are removed and counted, a header that names
    # another model gives a warning.
    text = labels.read_text(encoding="utf-8").splitlines()
    text[0] = text[0].replace('"model": "', '"model": "openclip:ViT-L-14/other-', 1)
    edited = tmp_path / "edited.txt"
    edited.write_text("\n".join([text[0], text[1], "Red Square", text[2], text[2], *text[3:]]) + "\n", encoding="utf-8")
    capsys.readouterr()
    out = _run_eval(tmp_path / "edited", image_sets, tiny_openclip, "neglabel", "--negatives", str(edited))
    report = json.loads((out / "metrics.json").read_text())["negatives_file"]
    assert (report["id_names_removed"], report["duplicates_removed"], report["labels"]) == (1, 1, 10_000)
    assert report["settings_mismatch"]["model"].startswith("openclip:ViT-L-14/other-")
    err = capsys.readouterr().err
    assert "was mined with model=" in err and "1 ID class names removed" in err and "1 repeated labels removed" in err


def test_eval_accepts_precomputed_features(tmp_path, image_sets, tiny_openclip):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "id.npy", rng.standard_normal((20, 32)).astype(np.float32))
    np.save(tmp_path / "ood.npy", rng.standard_normal((15, 32)).astype(np.float32))
    out = tmp_path / "npy"
    code = main(
        [
            "eval",
            "--method",
            "mcm",
            "--classes",
            str(image_sets["classes"]),
            "--id",
            str(tmp_path / "id.npy"),
            "--ood",
            f"far={tmp_path / 'ood.npy'}",
            "--out",
            str(out),
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["ood"]["far"]["n_ood"] == 15


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "negspace.cli", *args], capture_output=True, text=True, timeout=300)


def test_missing_weights_is_one_sentence_naming_weights_flag(tmp_path, image_sets):
    result = _cli(
        "eval",
        "--method",
        "mcm",
        "--classes",
        "imagenet",
        "--id",
        str(image_sets["id"]),
        "--ood",
        f"noise={image_sets['ood']}",
        "--weights",
        str(tmp_path / "nope.pt"),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 2
    assert "--weights" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("negspace: error:") == 1


def test_missing_or_empty_data_fails_before_the_model_loads(tmp_path, image_sets):
    empty = tmp_path / "empty"
    empty.mkdir()
    # The model spec is unloadable: reaching the data error first proves the order.
    for id_set in (tmp_path / "missing", empty):
        result = _cli(
            "eval",
            "--method",
            "mcm",
            "--classes",
            "imagenet",
            "--id",
            str(id_set),
            "--ood",
            f"noise={image_sets['ood']}",
            "--model",
            "openclip:NoSuchArch/none",
        )
        assert result.returncode == 2, result.stderr
        assert str(id_set.name) in result.stderr and "Traceback" not in result.stderr
        assert "NoSuchArch" not in result.stderr


def test_demo_data_writes_real_photos_and_patterns(tmp_path):
    assert main(["demo-data", str(tmp_path / "demo")]) == 0
    photos = sorted((tmp_path / "demo" / "id").iterdir())
    patterns = sorted((tmp_path / "demo" / "ood").iterdir())
    assert len(photos) == 12 and len(patterns) == 12
    with Image.open(photos[0]) as first:
        assert first.mode == "RGB" and min(first.size) >= 200


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("tanl", ["--tanl-beta", "200", "--tanl-queue-length", "20"]),
        ("adaneg", ["--num-negatives", "500", "--adaneg-proxy", "sample"]),
    ],
)
def test_eval_test_time_methods_follow_the_stream_protocol(tmp_path, image_sets, tiny_openclip, method, options):
    out = _run_eval(tmp_path, image_sets, tiny_openclip, method, *options)
    metrics = _check_outputs_stream(out, n_id=7, n_ood=6)
    assert metrics["stream"] == {
        "mode": "per-set",
        "seed": 0,
        "batch_size": 4,
        "reset_between_ood_sets": True,
        "order": ["noise"],
    }
    assert metrics["method"] == method
    assert "- stream protocol: per-set" in (out / "results.md").read_text()
    assert "- batch size: 4 images per update" in (out / "results.md").read_text()
    # The same seed gives the same stream and the same scores.
    again = _run_eval(tmp_path / "again", image_sets, tiny_openclip, method, *options)
    assert (again / "scores.csv").read_text() == (out / "scores.csv").read_text()


def test_eval_mixed_stream_reports_each_set_and_the_whole_stream(tmp_path, image_sets, tiny_openclip, capsys):
    code = main(
        [
            "eval",
            "--method",
            "tanl",
            "--classes",
            str(image_sets["classes"]),
            "--id",
            str(image_sets["id"]),
            "--ood",
            f"noise={image_sets['ood']}",
            "--ood",
            f"again={image_sets['ood']}",
            "--stream",
            "mixed",
            "--out",
            str(tmp_path / "mixed"),
            "--batch-size",
            "4",
            "--tanl-beta",
            "200",
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    assert "whole stream" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "mixed" / "metrics.json").read_text())
    assert metrics["stream"]["mode"] == "mixed" and not metrics["stream"]["reset_between_ood_sets"]
    assert (metrics["whole_stream"]["n_id"], metrics["whole_stream"]["n_ood"]) == (7, 12)
    rows = read_scores_csv(tmp_path / "mixed" / "scores.csv")
    assert len(rows) == 7 + 12 and {r["stream"] for r in rows} == {"mixed"}  # ID rows once
    # each set against the stream's ID rows, and the whole stream, as its scores give them
    for name in ("noise", "again"):
        assert_metrics(metrics["ood"][name], *scores_of(rows, name), abs_tol=1e-9)
    assert_metrics(
        metrics["whole_stream"],
        [float(r["score"]) for r in rows if r["is_id"] == "1"],
        [float(r["score"]) for r in rows if r["is_id"] == "0"],
        abs_tol=1e-9,
    )


def _check_outputs_stream(out: Path, n_id: int, n_ood: int) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    for name in [*OUTPUTS, "hist_noise.png"]:
        assert (out / name).is_file(), name
    rows = read_scores_csv(out / "scores.csv")
    assert len(rows) == n_id + n_ood and {r["stream"] for r in rows} == {"noise"}
    assert metrics["ood"]["noise"]["n_id"] == n_id
    _check_metrics_against_scores(out, rows, metrics)
    return metrics


def test_eval_ants_two_pass_with_a_real_http_mllm_then_reuse_the_space(
    tmp_path, image_sets, tiny_openclip, mllm_server, capsys
):
    server, chat_requests = mllm_server
    mllm = ["--mllm", server.spec, "--mllm-timeout", "10"]
    options = ["--num-negatives", "500", "--ants-mode", "two-pass", "--ants-schedule", "scaled", *mllm]
    out = _run_eval(tmp_path, image_sets, tiny_openclip, "ants", *options)
    metrics = _check_outputs_stream(out, n_id=7, n_ood=6)
    info = metrics["ants"]["noise"]
    assert metrics["mllm_calls"] == metrics["mllm_requests"] == info["mllm_requests"] == len(chat_requests) > 0
    assert info["mllm_stats"]["calls"] == len(chat_requests)  # this stream's share of the backend's counters
    assert (
        info["ens_size"] >= 1
        and "a field of colourful static noise" in (out / "negative_space" / "noise" / "state.json").read_text().lower()
    )
    with (out / "explanations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[0]["ood_set"] == "noise" and rows[0]["source"] in {"ens", "vsnl", "corpus"}
    # the MLLM is recorded by its endpoint and model (images are sent: their size too)
    assert metrics["ants"]["noise"]["mllm"] == {
        "backend": "openai",
        "endpoint": server.url_for("/v1"),
        "model": server.model,
        "image_size": 448,
    }
    # results.md states the protocol the numbers depend on
    results = (out / "results.md").read_text()
    assert (
        "- stream protocol: per-set (the papers' protocol" in results and "- batch size: 4 images per update" in results
    )

    # The same run again: every answer comes from the MLLM cache, the scores are identical.
    sent = len(chat_requests)
    again = _run_eval(tmp_path / "again", image_sets, tiny_openclip, "ants", *options)
    assert len(chat_requests) == sent
    assert (again / "scores.csv").read_text() == (out / "scores.csv").read_text()
    cached = json.loads((again / "metrics.json").read_text())
    assert (cached["mllm_calls"], cached["mllm_requests"]) == (0, sent)
    assert cached["mllm_stats"]["cache_hits"] == sent

    # The saved space scores without any MLLM.
    space = str(out / "negative_space" / "noise")
    capsys.readouterr()
    reused = _run_eval(tmp_path / "reused", image_sets, tiny_openclip, "ants", "--negative-space", space, "-v")
    wrote = re.search(r"wrote (\d+) files to", capsys.readouterr().err)
    files = [path for path in reused.iterdir() if path.is_file()]
    assert "explanations.csv" in {path.name for path in files} and int(wrote.group(1)) == len(files)
    reused_metrics = json.loads((reused / "metrics.json").read_text())
    assert reused_metrics["mllm_requests"] == 0 and reused_metrics["params"]["mode"] == "ada"
    assert len(chat_requests) == sent
    # Score-time options apply to a loaded space; learning options are reported as ignored.
    ablation = _run_eval(
        tmp_path / "ablation",
        image_sets,
        tiny_openclip,
        "ants",
        "--negative-space",
        space,
        "--ants-score",
        "ens",
        "--ants-lam",
        "0.3",
        "--groups",
        "10",
    )
    params = json.loads((ablation / "metrics.json").read_text())["params"]
    assert (params["mode"], params["lam"], params["groups"]) == ("ens", 0.3, 100)


def test_eval_ants_authors_preset_with_overrides_and_lam_report(tmp_path, image_sets, tiny_openclip, mllm_server):
    server, _ = mllm_server
    out = _run_eval(
        tmp_path,
        image_sets,
        tiny_openclip,
        "ants",
        "--num-negatives",
        "500",
        "--ants-schedule",
        "scaled",
        "--ants-preset",
        "authors",
        "--ants-ens-stop-step",
        "3",
        "--mllm",
        server.spec,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    params = metrics["params"]
    assert (params["lam_rule"], params["threshold"], params["ens_order"], params["similar_classes"]) == (
        "authors",
        "histogram",
        "prepend",
        "history_top40",
    )
    assert params["ens_stop_step"] == 3 and params["max_mllm_calls"] is None and params["mllm_lag"] == 0
    info = metrics["ants"]["noise"]
    assert {"a", "b", "lam", "negatives_mined", "negatives_described", "vsnl_id_names_removed"} <= set(info)
    # the authors' rule: Eq. 15 of the running means it reports
    assert info["lam"] == pytest.approx((1 - info["a"]) / ((1 - info["a"]) + (1 - info["b"])), abs=1e-12)
    paper = _run_eval(
        tmp_path / "paper",
        image_sets,
        tiny_openclip,
        "ants",
        "--num-negatives",
        "500",
        "--ants-schedule",
        "scaled",
        "--ants-lam-rule",
        "crossfit",
        "--ants-mllm-lag",
        "1",
        "--mllm",
        server.spec,
    )
    params = json.loads((paper / "metrics.json").read_text())["params"]
    assert (params["lam_rule"], params["threshold"], params["mllm_lag"], params["max_mllm_calls"]) == (
        "crossfit",
        "paper",
        1,
        2000,
    )


def test_eval_ants_without_an_mllm_is_one_clear_error(tmp_path, image_sets, tiny_openclip, capsys):
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
            str(tmp_path / "o"),
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 2
    assert "--mllm" in capsys.readouterr().err


def test_ants_on_feature_files_warns_and_keeps_working(tmp_path, image_sets, tiny_openclip, mllm_server, capsys):
    server, chat_requests = mllm_server
    rng = np.random.default_rng(1)
    np.save(tmp_path / "id.npy", rng.standard_normal((30, 32)).astype(np.float32))
    np.save(tmp_path / "ood.npy", rng.standard_normal((20, 32)).astype(np.float32))
    out = tmp_path / "npy-ants"
    code = main(
        [
            "eval",
            "--method",
            "ants",
            "--classes",
            str(image_sets["classes"]),
            "--id",
            str(tmp_path / "id.npy"),
            "--ood",
            f"far={tmp_path / 'ood.npy'}",
            "--out",
            str(out),
            "--num-negatives",
            "500",
            "--ants-schedule",
            "scaled",
            "--mllm",
            server.spec,
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    assert "only the VSNL bank" in capsys.readouterr().err
    # No image was ever sent: every request that reached the server is a text-only VSNL prompt.
    assert all(
        isinstance(r["messages"][-1]["content"], str) or all(p["type"] == "text" for p in r["messages"][-1]["content"])
        for r in chat_requests
    )


def test_bad_feature_file_and_unwritable_out_fail_early_with_one_sentence(tmp_path, image_sets):
    bad = np.ones((5, 8), dtype=np.float32)
    bad[3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    result = _cli(
        "eval",
        "--method",
        "mcm",
        "--classes",
        "imagenet",
        "--id",
        str(tmp_path / "bad.npy"),
        "--ood",
        f"noise={image_sets['ood']}",
        "--model",
        "openclip:NoSuchArch/none",
    )
    assert result.returncode == 2 and "row 3" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "taken").write_text("a file, not a folder")
    result = _cli(
        "eval",
        "--method",
        "mcm",
        "--classes",
        "imagenet",
        "--id",
        str(image_sets["id"]),
        "--ood",
        f"noise={image_sets['ood']}",
        "--out",
        str(tmp_path / "taken" / "run"),
        "--model",
        "openclip:NoSuchArch/none",
    )
    assert result.returncode == 2 and "results folder" in result.stderr and "NoSuchArch" not in result.stderr


def test_mllm_server_down_fails_before_the_model_loads(tmp_path, image_sets):
    port = closed_port()
    result = _cli(
        "eval",
        "--method",
        "ants",
        "--classes",
        "imagenet",
        "--id",
        str(image_sets["id"]),
        "--ood",
        f"noise={image_sets['ood']}",
        "--out",
        str(tmp_path / "o"),
        "--mllm",
        f"openai:http://127.0.0.1:{port}/v1/some-vlm",
        "--model",
        "openclip:NoSuchArch/none",
    )
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "NoSuchArch" not in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_ants_online_streams_with_background_mllm(tmp_path, image_sets, tiny_openclip, mllm_server):
    server, chat_requests = mllm_server
    out = _run_eval(
        tmp_path,
        image_sets,
        tiny_openclip,
        "ants",
        "--num-negatives",
        "500",
        "--ants-schedule",
        "scaled",
        "--mllm",
        server.spec,
    )
    metrics = _check_outputs_stream(out, n_id=7, n_ood=6)
    info = metrics["ants"]["noise"]
    assert info["vsnl_updates"] >= 1 and metrics["mllm_requests"] == len(chat_requests) > 0
    assert (out / "negative_space" / "noise" / "state.json").is_file()


def test_eval_ants_stops_with_exit_3_when_the_mllm_answers_garbage(tmp_path, image_sets, tiny_openclip, mllm_server):
    """Descriptions that are one word repeated are rejected; more than 10% lost stops the run."""
    import subprocess
    import sys

    server, _chat_requests = mllm_server
    server.describe_answer = "lorem lorem lorem lorem lorem"
    out = tmp_path / "garbage"
    args = [
        "eval",
        "--method",
        "ants",
        "--classes",
        str(image_sets["classes"]),
        "--id",
        str(image_sets["id"]),
        "--ood",
        f"noise={image_sets['ood']}",
        "--ood",
        f"again={image_sets['ood']}",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--num-negatives",
        "500",
        "--ants-mode",
        "two-pass",
        "--no-mllm-cache",
        "--mllm",
        server.spec,
        *_model_args(tiny_openclip),
    ]
    result = subprocess.run([sys.executable, "-m", "negspace.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "marked incomplete" in result.stderr
    assert "banks built from" in result.stdout and "unusable" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["incomplete"]["ood_sets_not_scored"] == ["again"] and list(metrics["ood"]) == ["noise"]
    info = metrics["ants"]["noise"]
    assert info["banks_incomplete"] and info["mllm_rejected_answers"] > 0 and info["ens_size"] == 0
    # a generous limit lets the run finish, still saying the banks are incomplete
    assert (
        main(
            [
                *args[: -len(_model_args(tiny_openclip))],
                "--mllm-max-failures",
                "1",
                "--out",
                str(tmp_path / "tolerated"),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["neglabel", "tanl"])
def test_scoring_backend_torch_gives_the_numpy_scores(tmp_path, image_sets, tiny_openclip, method):
    import csv

    options = ["--num-negatives", "500", "--groups", "10"] if method == "neglabel" else ["--tanl-beta", "200"]
    on_numpy = _run_eval(tmp_path / "numpy", image_sets, tiny_openclip, method, *options)
    on_torch = _run_eval(
        tmp_path / "torch", image_sets, tiny_openclip, method, *options, "--scoring-backend", "torch", "--device", "cpu"
    )

    def scores(out):
        with (out / "scores.csv").open() as f:
            return {(row["set"], row["stream"], row["sample"]): float(row["score"]) for row in csv.DictReader(f)}

    want, got = scores(on_numpy), scores(on_torch)
    assert got.keys() == want.keys() and len(got) >= 13
    assert_scores_close([got[k] for k in want], list(want.values()), dim=TINY_DIM)
    params = json.loads((on_torch / "metrics.json").read_text())["params"]
    assert (params["backend"], params["device"]) == ("torch", "cpu")
    assert "backend" not in json.loads((on_numpy / "metrics.json").read_text())["params"]


def test_log_lines_go_to_the_stderr_of_the_moment_not_a_closed_earlier_one(monkeypatch):
    """A server thread from an earlier ``main`` must not write into the stderr that was swapped
    out and closed since (pytest does this between tests; CI once logged tracebacks so)."""
    import io
    import logging

    from negspace.cli import _configure_logging

    earlier = io.StringIO()  # (conftest puts the logger back afterwards)
    monkeypatch.setattr(sys, "stderr", earlier)
    _configure_logging(verbose=False, quiet=False)
    earlier.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    logging.getLogger("negspace.serve.app").info("stopped: %d images scored", 7)
    assert now.getvalue() == "negspace: INFO: stopped: 7 images scored\n"
