"""``negspace bench``: suites as data, the layout check, ours beside the published numbers, the report."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from external_tools import headless_chromium
from negspace.bench import BenchConfig, run_suite
from negspace.bench.layout import check_sets
from negspace.bench.miniature import write_miniature
from negspace.bench.published import published_for
from negspace.bench.suites import load_suite, suite_names
from negspace.classnames import load_class_names
from negspace.cli import main
from negspace.runconfig import ModelConfig
from reference_metrics import auroc, fpr95_ood, read_scores_csv, scores_of

SUITES = ("domain-shift", "fine-grained", "imagenet", "imagenet10-20", "openood-v1.5")


def _model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-data")
    for name in SUITES:
        write_miniature(load_suite(name), root / name, per_set=3)
    return root


def test_the_suites_shipped_are_the_five_of_the_issue():
    assert suite_names() == sorted(SUITES)


@pytest.mark.parametrize("name", SUITES)
def test_every_published_cell_of_a_suite_lands_in_one_of_its_columns(name):
    suite = load_suite(name)
    for run in suite.runs:
        columns = {s.published_as for s in run.ood} | {a.name for a in run.averages}
        published = published_for(suite.tables, run.id.published_as)
        assert published, f"{name}/{run.name}: no published rows for {run.id.published_as}"
        assert {v.ood_set for v in published} <= columns
        assert {"MCM", "NegLabel"} <= {v.method for v in published} or name == "openood-v1.5"


def test_published_numbers_agree_with_the_spec_and_the_papers():
    """Golden cells, read from the papers' tables, not from the shipped file."""
    table1 = {(v.method, v.ood_set, v.metric): v.value for v in published_for(["ANTS paper/Table 1"], "ImageNet-1k")}
    assert table1[("ANTS", "Average", "FPR95")] == 13.31
    openood = {(v.method, v.ood_set, v.metric): v.value for v in published_for(["ANTS paper/Table 2"], "ImageNet-1k")}
    assert (openood[("ANTS", "Near-OOD average", "FPR95")], openood[("ANTS", "Far-OOD average", "FPR95")]) == (
        60.98,
        15.38,
    )
    tanl = published_for(["TANL abstract/abstract"], "ImageNet-1k")
    assert [(v.method, v.metric, v.value) for v in tanl] == [("TANL", "FPR95", 9.8)]


def test_built_in_class_lists_of_the_suites():
    sizes = {
        name: len(load_class_names(name))
        for name in ("imagenet-a", "imagenet-r", "imagenet-10", "imagenet-20", "oxford-pet")
    }
    assert sizes == {"imagenet-a": 200, "imagenet-r": 200, "imagenet-10": 10, "imagenet-20": 20, "oxford-pet": 37}
    imagenet = load_class_names("imagenet").names
    assert set(load_class_names("imagenet-a").names) <= set(imagenet)
    assert load_class_names("imagenet-a").names[:2] == ("stingray", "goldfinch")  # classes 6 and 11


def test_list_describes_every_layout_count_and_source(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for text in (
        "benchmark_imglist/imagenet/test_ninco.txt",
        "5,879",
        "dtd/images/",
        "5,640",
        "CUB_200_2011/",
        "Bitterwolf et al.",
        "ANTS paper/Table 11",
    ):
        assert text in out


def test_missing_and_short_sets_are_listed_before_any_model_loads(tmp_path, miniatures, capsys):
    root = tmp_path / "imagenet"
    shutil.copytree(miniatures / "imagenet", root)
    shutil.rmtree(root / "SUN")
    # a model that does not exist: reaching it would be another error
    code = main(
        [
            "bench",
            "--suite",
            "imagenet",
            "--data-root",
            str(root),
            "--model",
            "openclip:NoSuchArch/none",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "sun (SUN): SUN/" in err and "does not exist" in err
    assert "inaturalist (iNaturalist): iNaturalist/ — 3 images found, 10,000 expected" in err
    assert "imagenet (ImageNet-1k): imagenet/val/ — 3 images found, 50,000 expected" in err
    assert not (tmp_path / "out").exists()
    checks = check_sets(load_suite("imagenet"), root, check_counts=False)
    assert [name for name, check in checks.items() if check.problem] == ["sun"]


def test_bench_runs_every_method_once_per_image_with_both_columns(tmp_path, miniatures, tiny_openclip, capsys):
    out = tmp_path / "out"
    # every method but CSP, whose WordNet pool (415k prompts) takes minutes even with the tiny model;
    # CSP runs in the bench below with a small pool
    code = main(
        [
            "bench",
            "--suite",
            "imagenet",
            "--data-root",
            str(miniatures / "imagenet"),
            "--method",
            "mcm,neglabel,tanl,adaneg,ants",
            "--no-count-check",
            "--limit",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(out),
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ANTS was skipped" in printed and "Not comparable with the published numbers" in printed
    for difference in (
        "sets: ours a subset of at most 2 images per set",
        "backbone: ours openclip:negspace-tiny-clip.json/none",
        "published CLIP ViT-B/16 (OpenAI's CLIP weights)",
        "unverified",
        "batch size: ours 4, published 256 (AdaNeg, TANL)",
    ):
        assert difference in printed, difference
    assert "a reference only" in printed and not re.search(
        r"Δ [-+]?\d", printed
    )  # no difference where none is meaningful
    rows = _csv(out / "results.csv")
    cell = {(r["method"], r["ood_set"], r["metric"]): r for r in rows}
    # published side: the paper's numbers; ours: what each method's own metrics.json says
    assert float(cell[("NegLabel", "Average", "FPR95")]["published"]) == 25.40
    per_method = json.loads((out / "imagenet" / "neglabel" / "metrics.json").read_text())
    ours = np.mean([100 * per_method["ood"][s]["fpr95_ood"] for s in ("inaturalist", "sun", "places", "textures")])
    assert float(cell[("NegLabel", "Average", "FPR95")]["ours"]) == pytest.approx(ours, abs=1e-3)
    assert cell[("NegLabel", "Average", "FPR95")]["difference"] == ""  # a subset: published is a reference only
    assert {r["compared"] for r in rows} == {"False"} and cell[("NegLabel", "SUN", "AUROC")][
        "published_backbone"
    ] == "CLIP ViT-B/16"
    assert (
        cell[("ANTS", "Average", "FPR95")]["ours"] == "" and cell[("CSP", "Average", "FPR95")]["published"] == "17.51"
    )
    assert {r["subset"] for r in rows} == {"True"} and cell[("MCM", "SUN", "AUROC")]["our_backbone"].startswith(
        "openclip:"
    )
    for method in ("mcm", "neglabel", "tanl", "adaneg"):  # the eval files of every method
        assert (out / "imagenet" / method / "scores.csv").is_file()
        assert json.loads((out / "imagenet" / method / "metrics.json").read_text())["id_set"]["n"] == 2
    markdown = (out / "results.md").read_text()
    # every number of ours, in results.md and results.csv, is what that method's scores.csv gives
    # (AUROC by scikit-learn, FPR95 by its definition, in the tables' convention, OOD positive)
    sets = {"inaturalist": "iNaturalist", "sun": "SUN", "places": "Places", "textures": "Textures"}
    for method, shown in (("mcm", "MCM"), ("neglabel", "NegLabel"), ("tanl", "TANL"), ("adaneg", "AdaNeg")):
        scores = read_scores_csv(out / "imagenet" / method / "scores.csv")
        per_set = {sets[s]: (100 * fpr95_ood(*scores_of(scores, s)), 100 * auroc(*scores_of(scores, s))) for s in sets}
        per_set["Average"] = tuple(np.mean(list(per_set.values()), axis=0))
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {shown} | ours |"))
        assert line.split("|")[3].strip() == "openclip:negspace-tiny-clip.json/none"
        in_table = [float(c) for c in line.strip().strip("|").split("|")[3:]]
        assert np.allclose(in_table, [v for pair in per_set.values() for v in pair], rtol=0, atol=0.005 + 1e-9), line
        for ood_set, values in per_set.items():
            in_csv = [float(cell[(shown, ood_set, metric)]["ours"]) for metric in ("FPR95", "AUROC")]
            assert np.allclose(in_csv, values, rtol=0, atol=5e-5 + 1e-9), (shown, ood_set, in_csv, values)
    assert "|  | published (reference) | CLIP ViT-B/16 |" in markdown and "| TANL | ours |" in markdown
    assert "Not comparable with the published numbers" in markdown and "| Δ |" not in markdown
    assert "- batch size: ours 4, published 256 (AdaNeg, TANL)" in markdown
    assert "stream protocol per-set" in markdown and "scored in batches of 4" in markdown  # the test-time protocol
    assert "Every number is a percentage" in markdown and "Average FPR95 (%)↓" in markdown
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 5  # ROC + one histogram figure per method
    assert "src='http" not in report and "href='http" not in report  # self-contained
    assert "not the papers&#x27; sets" in report or "not the papers' sets" in report
    first = report[report.index("id='comparison'") : report.index("<table class='facts'>")]  # the report's first lines
    assert "Not comparable" in first and "backbone: ours openclip:negspace-tiny-clip.json/none" in first
    assert "batch size: ours 4, published 256" in first and "class='banner'" in report
    assert "FPR95 (%)" in report and "Values in percent" in report and "<td class='m bb'>CLIP ViT-B/16</td>" in report
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["subset"] and not summary["papers_sets"] and "50,000" in " ".join(summary["not_papers_sets_because"])
    assert summary["comparable"] is False and summary["backbone"]["published_as"] is None
    assert [d["what"] for d in summary["differences"]] == ["sets", "backbone", "batch size"]
    assert summary["differences"][2]["methods"] == ["AdaNeg", "TANL"] and summary["batch_size"] == 4
    assert summary["fpr95_convention"] == "fpr95_ood" and set(summary["runs"]["imagenet"]) == {
        "mcm",
        "neglabel",
        "tanl",
        "adaneg",
    }


@pytest.mark.parametrize("name", ["openood-v1.5", "imagenet10-20", "domain-shift", "fine-grained"])
def test_bench_reads_each_suite_layout(tmp_path, miniatures, tiny_openclip, name):
    out = tmp_path / name
    code = main(
        [
            "bench",
            "--suite",
            name,
            "--data-root",
            str(miniatures / name),
            "--method",
            "mcm",
            "--no-count-check",
            "--batch-size",
            "4",
            "--out",
            str(out),
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    rows = _csv(out / "results.csv")
    suite = load_suite(name)
    mcm = [r for r in rows if r["method"] == "MCM"]
    assert {r["run"] for r in mcm} == {run.name for run in suite.runs}
    assert all(r["ours"] != "" for r in mcm) and any(r["published"] != "" for r in mcm)
    for run in suite.runs:
        scored = json.loads((out / run.name / "mcm" / "metrics.json").read_text())
        assert scored["id_set"]["n"] == 3 and set(scored["ood"]) == {s.name for s in run.ood}


def test_bench_ants_with_a_real_http_mllm_shows_images_texts_and_lam(tmp_path, miniatures, tiny_openclip, mllm_server):
    server, _ = mllm_server
    out = tmp_path / "ants"
    code = main(
        [
            "bench",
            "--suite",
            "imagenet10-20",
            "--data-root",
            str(miniatures / "imagenet10-20"),
            "--method",
            "ants",
            "--no-count-check",
            "--batch-size",
            "2",
            "--ants-schedule",
            "scaled",
            "--mllm",
            server.spec,
            "--mllm-timeout",
            "10",
            "--out",
            str(out),
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    report = (out / "report.html").read_text()
    assert "lam over the stream" in report and "the most OOD-looking images of the stream of ImageNet-20" in report
    assert report.count("data:image/jpeg;base64,") >= 3  # thumbnails of the explained images
    explanations = _csv(out / "imagenet10" / "ants" / "explanations.csv")
    assert explanations and {r["ood_set"] for r in explanations} == {"imagenet20"}
    # a schedule fitted to the stream is not the paper's online protocol: ANTS's cells are kept apart
    stream = [d for d in json.loads((out / "metrics.json").read_text())["differences"] if d["what"] == "stream"]
    assert [(d["methods"], d["published"]) for d in stream] == [(["ANTS"], "the paper's online stream")]
    assert "schedule scaled" in stream[0]["ours"] and stream[0]["text"] in (out / "results.md").read_text()


# Per figure: its size and the share of its pixels in colour (data: curves, bars, markers); axes,
# text and grid are grey, so an empty chart has none.
_FIGURE_INK = """
return Array.from(document.querySelectorAll('img.fig')).map(img => {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    const r = pixels[i], g = pixels[i + 1], b = pixels[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
  }
  return [img.alt, img.naturalWidth, coloured / (canvas.width * canvas.height)];
});
"""

_CARDS = """
return Array.from(document.querySelectorAll('.gallery .card')).map(card => {
  const mark = card.querySelector('.mark');
  const title = card.querySelector('div[title]');
  return [card.closest('section.run').id, card.className, mark ? mark.textContent : null,
          title ? title.getAttribute('title') : null];
});
"""


def test_report_reads_well_in_a_real_browser(tmp_path, miniatures, tiny_openclip, mllm_server):
    """The report of a miniature run in headless Chromium: the not-the-papers'-sets banner, a notes
    section holding the run's logged warnings, no empty chart, and every gallery card marked with
    the set its image is from. The screenshot is kept in NEGSPACE_TEST_SCREENSHOTS when set."""
    server, _ = mllm_server
    out = tmp_path / "report"
    data = tmp_path / "data"
    shutil.copytree(miniatures / "imagenet10-20", data)
    first = next(path for path in sorted((data / "ImageNet20").rglob("*")) if path.is_file())
    first.with_name("broken" + first.suffix).write_bytes(b"not an image")  # logs a warning, skipped
    assert (
        main(
            [
                "bench",
                "--suite",
                "imagenet10-20",
                "--data-root",
                str(data),
                "--method",
                "mcm,neglabel,ants",
                "--no-count-check",
                "--batch-size",
                "2",
                "--ants-schedule",
                "scaled",
                "--mllm",
                server.spec,
                "--out",
                str(out),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert any("broken" in text for text in warnings)
    driver = headless_chromium()
    try:
        driver.set_window_size(1400, 1000)
        driver.get((out / "report.html").resolve().as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(height + 200, 16000))
        screenshot = driver.get_screenshot_as_png()
        tables = driver.execute_script("return document.querySelectorAll('table.cmp').length")
        banner = driver.execute_script("const b = document.getElementById('comparison'); return b ? b.innerText : null")
        notes = driver.execute_script("const n = document.getElementById('notes'); return n ? n.innerText : null")
        figures = driver.execute_script(_FIGURE_INK)
        cards = driver.execute_script(_CARDS)
        deltas = driver.execute_script("return document.querySelectorAll('tr.delta').length")
    finally:
        driver.quit()
    if os.environ.get("NEGSPACE_TEST_SCREENSHOTS"):
        Path(os.environ["NEGSPACE_TEST_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["NEGSPACE_TEST_SCREENSHOTS"]) / "bench-report.png").write_bytes(screenshot)
    assert errors == [] and screenshot.startswith(b"\x89PNG") and len(screenshot) > 50_000
    assert tables == 2  # one per run
    assert banner is not None and "image counts other than the papers'" in banner and "backbone: ours" in banner
    assert deltas == 0  # not the papers' sets: no difference row beside the published numbers
    assert notes is not None
    assert warnings and all(text in notes for text in warnings)  # every logged warning reaches the page
    names = [alt for alt, _, _ in figures]
    assert any("lam" in name for name in names) and sum("histograms" in name for name in names) == 6
    empty = [(alt, ink) for alt, width, ink in figures if width == 0 or ink < 0.002]
    assert empty == [], empty
    assert cards, "no gallery"
    id_folders = {run.name: str(data / run.id.layout()) for run in load_suite("imagenet10-20").runs}
    for run, css, mark, sample in cards:
        truth = "ID" if sample.startswith(id_folders[run.removeprefix("run-")] + "/") else "OOD"
        assert mark == truth and truth.lower() in css.split(), (run, css, mark, sample)
    assert {mark for _, _, mark, _ in cards} == {"ID", "OOD"}


def test_the_docs_list_every_layout_and_count_of_the_suites():
    readme = (Path(__file__).parents[1] / "docs" / "guides" / "reproduce.md").read_text(encoding="utf-8")
    for name in SUITES:
        for spec in load_suite(name).all_sets():
            assert f"{spec.count:>7,}  {spec.layout()}" in readme, (name, spec.name)


def test_broken_dataset_files_are_one_message_not_a_traceback(tmp_path, miniatures, capsys):
    root = tmp_path / "fine"
    shutil.copytree(miniatures / "fine-grained", root)
    (root / "CUB_200_2011" / "images.txt").write_text("1\n", encoding="utf-8")  # a line with one field
    (root / "stanford_cars" / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file")
    code = main(
        [
            "bench",
            "--suite",
            "fine-grained",
            "--data-root",
            str(root),
            "--no-count-check",
            "--model",
            "openclip:NoSuchArch/none",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "images.txt line 1 has 1 field(s), 2 expected" in err and "cars_meta.mat cannot be read as cars-mat" in err


def test_an_empty_tanl_batch_scores_to_nothing():
    from negspace.detectors.tanl import TANL
    from negspace.testing import make_world

    world = make_world(n_corpus=300, n_classes=5, n_per_class=5, n_per_concept=10)
    noise = np.random.default_rng(0).standard_normal((15, world.dim)).astype(np.float32)
    det = TANL.from_features(world.id_text_features, world.corpus_features, noise, beta=20)
    assert det.score_features(np.zeros((0, world.dim), np.float32)).shape == (0,)


def test_bench_stops_ants_and_exits_3_when_the_mllm_answers_garbage(
    tmp_path, miniatures, tiny_openclip, mllm_server, capsys
):
    server, _ = mllm_server
    server.describe_answer = "lorem lorem lorem lorem lorem"  # rejected: one word repeated
    out = tmp_path / "garbage"
    code = main(
        [
            "bench",
            "--suite",
            "imagenet10-20",
            "--data-root",
            str(miniatures / "imagenet10-20"),
            "--method",
            "mcm,ants",
            "--no-count-check",
            "--batch-size",
            "2",
            "--ants-mode",
            "two-pass",
            "--no-mllm-cache",
            "--mllm",
            server.spec,
            "--out",
            str(out),
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 3
    captured = capsys.readouterr()
    assert "the ANTS results are incomplete" in captured.err and "ANTS stopped on run imagenet10" in captured.out
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["runs"]["imagenet10"]["ants"]["incomplete"] and "ants" not in summary["runs"]["imagenet20"]
    assert "mcm" in summary["runs"]["imagenet20"]  # the other methods went on
    assert json.loads((out / "imagenet10" / "ants" / "metrics.json").read_text())["incomplete"]
    assert "ANTS stopped" in (out / "results.md").read_text()


def test_a_count_check_turned_off_is_not_the_papers_sets_and_the_difference_needs_them(
    tmp_path, miniatures, tiny_openclip, capsys
):
    out = tmp_path / "out"
    assert (
        main(
            [
                "bench",
                "--suite",
                "imagenet10-20",
                "--data-root",
                str(miniatures / "imagenet10-20"),
                "--method",
                "mcm",
                "--no-count-check",
                "--batch-size",
                "4",
                "--out",
                str(out),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    summary = json.loads((out / "metrics.json").read_text())
    assert (
        summary["subset"]
        and summary["limit"] is None
        and "image counts other than the papers'" in summary["not_papers_sets_because"][0]
    )
    assert {r["difference"] for r in _csv(out / "results.csv")} == {""}
    assert "sets" in [d["what"] for d in summary["differences"]] and not summary["comparable"]
    # the same tables where everything is the papers': tests/test_bench_compare.py


def test_bench_csp_on_the_miniature_suite_with_a_small_pool(tmp_path, miniatures, tiny_openclip):
    from negspace.bench import BenchConfig, run_suite
    from negspace.detectors.csp import CSPConfig
    from negspace.runconfig import ModelConfig

    corpus = tmp_path / "pool.txt"
    corpus.write_text(
        "\n".join([f"object{i}" for i in range(300)] + [f"adj{i}\tadj" for i in range(100)]), encoding="utf-8"
    )
    config = BenchConfig(
        "imagenet",
        methods=("csp", "neglabel"),
        check_counts=False,
        limit=2,
        batch_size=4,
        params={"csp": CSPConfig(pool=str(corpus), groups=10)},
    )
    model = ModelConfig(tiny_openclip.spec, tiny_openclip.weights, device="cpu", progress=False)
    result = run_suite(config, data_root=miniatures / "imagenet", model=model, out=tmp_path / "out")
    csp = result.evaluations["imagenet"]["csp"]
    assert csp.info["params"]["n_negatives"] == int(300 * 0.15) + int(100 * 0.15)
    assert set(csp.results) == {"inaturalist", "sun", "places", "textures"}
    rows = _csv(tmp_path / "out" / "results.csv")
    cell = {(r["method"], r["ood_set"], r["metric"]): r for r in rows}
    assert cell[("CSP", "Average", "FPR95")]["ours"] != "" and cell[("CSP", "Average", "FPR95")]["published"] == "17.51"
    assert (tmp_path / "out" / "imagenet" / "csp" / "scores.csv").is_file()


def test_bench_times_each_stage_and_a_second_run_reads_every_image_from_the_cache(
    tmp_path, miniatures, tiny_openclip, capsys
):
    """metrics.json's seconds per stage (listing, hashing, decoding, encoding, each method's building
    and scoring, report) add up to at most the run's time; run again on the same cache, the images
    are neither decoded nor encoded, and every set says so."""
    data = miniatures / "imagenet10-20"
    runs = []
    for name in ("first", "again"):
        args = [
            "bench",
            "--suite",
            "imagenet10-20",
            "--data-root",
            str(data),
            "--method",
            "mcm,neglabel",
            "--no-count-check",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / name),
            *_model_args(tiny_openclip),
        ]
        assert main(args) == 0
        assert "Time: " in capsys.readouterr().out
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    first, again = (run["seconds_per_stage"] for run in runs)
    stages = {
        "listing and checking",
        "loading the model",
        "images: hash",
        "images: decode",
        "images: encode",
        "mcm: building (texts, banks)",
        "mcm: scoring",
        "neglabel: building (texts, banks)",
        "neglabel: scoring",
        "report",
    }
    assert set(first) == set(again) == stages
    assert all(seconds >= 0 for seconds in first.values()) and sum(first.values()) <= runs[0]["seconds"] + 0.5
    assert (
        first["images: decode"] > 0 and first["images: encode"] > 0 and first["neglabel: building (texts, banks)"] > 0
    )
    assert again["images: decode"] == again["images: encode"] == 0.0
    result = run_suite(
        BenchConfig("imagenet10-20", methods=("mcm",), check_counts=False),
        data_root=data,
        model=ModelConfig(
            tiny_openclip.spec,
            weights=tiny_openclip.weights,
            device="cpu",
            cache_dir=tmp_path / "cache",
            progress=False,
        ),
    )
    for evaluations in result.evaluations.values():
        sets = [evaluations["mcm"].id_set, *evaluations["mcm"].ood_sets]
        assert [s.from_cache for s in sets] == [len(s.features) for s in sets]
