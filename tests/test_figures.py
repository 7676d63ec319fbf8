"""The report's pictures: one x-axis per method, legends that hide nothing, coinciding ROC curves
named, integer image counts, units on every axis, and the miniature bench's report looked at in a
real browser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from external_tools import headless_chromium
from negspace.bench import figures
from negspace.bench.miniature import write_miniature
from negspace.bench.suites import load_suite
from negspace.cli import main
from negspace.evaluation import EncodedSet, Evaluation
from negspace.metrics import compute_all
from negspace.plots import coinciding_curves, histogram_xlabel, roc_points


def _evaluation(method: str, id_scores: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray]) -> Evaluation:
    """An evaluation of a test-time method: each OOD set with its own stream's ID scores."""

    def encoded(name: str, n: int) -> EncodedSet:
        return EncodedSet(name, np.zeros((n, 2), np.float32), [f"{name}/{i}.png" for i in range(n)])

    first = next(iter(id_scores.values()))
    return Evaluation(
        encoded("id", len(first)),
        [encoded(name, len(s)) for name, s in ood_scores.items()],
        first,
        dict(ood_scores),
        {name: compute_all(id_scores[name], s) for name, s in ood_scores.items()},
        info={"method": method},
        stream_id_scores=dict(id_scores),
    )


def _tanl_like() -> Evaluation:
    """TANL's scores of the report that switched scale: one stream piled up at 0 (where the logit
    spreads them), one spread over 1e-5..2e-3 (linear bins keep them apart)."""
    rng = np.random.default_rng(0)
    return _evaluation(
        "tanl",
        {"inaturalist": rng.uniform(1e-6, 2e-5, 30), "sun": rng.uniform(0.3, 0.9, 30)},
        {"inaturalist": rng.uniform(1e-7, 4e-6, 30), "sun": rng.uniform(0.1, 0.6, 30)},
    )


def _data_boxes(fig):
    """Every axes' box and every bar's and line's box in display pixels, after a draw."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    boxes = []
    for ax in fig.axes:
        boxes.append(("axes", ax.get_window_extent(renderer)))
        boxes += [("bar", patch.get_window_extent(renderer)) for patch in ax.patches]
        boxes += [("line", line.get_window_extent(renderer)) for line in ax.lines if len(line.get_xdata())]
    return renderer, boxes


def _assert_legends_hide_nothing(fig) -> int:
    """No legend overlaps an axes (so no bar or curve), the tick labels and axis label of any
    axes, or another legend; every legend lies inside the figure."""
    renderer, boxes = _data_boxes(fig)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    boxes += [("x-axis text", ax.xaxis.get_tightbbox(renderer)) for ax in fig.axes]
    boxes += [("y-axis text", ax.yaxis.get_tightbbox(renderer)) for ax in fig.axes]
    boxes += [("title", ax.title.get_window_extent(renderer)) for ax in fig.axes if ax.get_title()]
    whole = fig.bbox
    for legend in legends:
        box = legend.get_window_extent(renderer)
        others = [("legend", other.get_window_extent(renderer)) for other in legends if other is not legend]
        hidden = [kind for kind, data in boxes + others if box.overlaps(data)]
        assert hidden == [], (hidden, box)
        assert whole.x0 - 1 <= box.x0 and box.x1 <= whole.x1 + 1 and whole.y0 - 1 <= box.y0, (box, whole)
    return len(legends)


def test_a_method_keeps_one_x_axis_across_sets_whose_scores_differ():
    """A stream whose scores pile up at 0 and one whose scores are spread: both panels of the
    method on the logit scale, and its threshold printed on the same scale."""
    evaluation = _tanl_like()
    fig = figures.draw_histograms("tanl", evaluation, {})
    labels = {ax.get_xlabel() for ax in fig.axes}
    assert labels == {histogram_xlabel(True)}
    for ax, name in zip(fig.axes, ("inaturalist", "sun"), strict=False):
        threshold = next(line for line in ax.lines if line.get_label().startswith("95% of ID kept"))
        where = threshold.get_xdata()[0]
        assert "logit" in threshold.get_label()
        scores = np.concatenate([evaluation.id_scores_for(name), evaluation.ood_scores[name]])
        logits = np.log(scores / (1 - scores))
        assert logits.min() <= where <= logits.max()  # drawn among the logits, not at a raw score
    # a method whose scores are not probabilities keeps the raw score everywhere
    rng = np.random.default_rng(1)
    raw = _evaluation(
        "mcm",
        {"a": rng.normal(0, 3, 20), "b": rng.uniform(0, 1, 20)},
        {"a": rng.normal(-2, 3, 20), "b": rng.uniform(0, 1, 20)},
    )
    assert {ax.get_xlabel() for ax in figures.draw_histograms("mcm", raw, {}).axes} == {histogram_xlabel(False)}


def test_eval_writes_every_histogram_of_a_method_on_one_scale(tmp_path, monkeypatch):
    """``negspace eval``'s histograms (one PNG per set) follow the same one-decision rule."""
    from negspace import plots, report

    seen = []
    original = plots.score_histogram

    def spy(ax, *args, **kwargs):
        original(ax, *args, **kwargs)
        seen.append(ax.get_xlabel())

    monkeypatch.setattr(report, "score_histogram", spy)
    written = report.write_report(_tanl_like(), tmp_path)
    assert seen == [histogram_xlabel(True)] * 2 and {p.name for p in written} >= {"hist_sun.png", "roc.png"}


def test_legends_hide_no_bar_and_no_curve():
    evaluation = _tanl_like()
    other = _evaluation(
        "mcm",
        {name: s + 0.5 for name, s in evaluation.stream_id_scores.items()},
        {name: s + 0.5 for name, s in evaluation.ood_scores.items()},
    )
    assert _assert_legends_hide_nothing(figures.draw_histograms("tanl", evaluation, {})) == 2
    assert (
        _assert_legends_hide_nothing(figures.draw_roc({"tanl": evaluation, "mcm": other}, ["inaturalist", "sun"], {}))
        == 2
    )
    traces = {"inaturalist": [(3, 1.0), (6, 1.0), (9, 0.5)], "sun": [(3, 1.0), (6, 0.8), (9, 0.7)]}
    assert _assert_legends_hide_nothing(figures.draw_lam(traces, {})) == 1


def test_five_sets_go_on_two_rows_that_fit_the_page_with_nothing_hidden():
    """OpenOOD's five sets: panels on rows of at most four (at 90 dpi, within the report's 1400
    pixels), the legends of the first row clear of the second row's titles."""
    rng = np.random.default_rng(3)
    names = ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"]
    evaluations = {
        method: _evaluation(
            method, {n: rng.uniform(0, 1, 20) for n in names}, {n: rng.uniform(0, 0.9, 20) for n in names}
        )
        for method in ("MCM", "NegLabel")
    }
    for fig in (figures.draw_roc(evaluations, names, {}), figures.draw_histograms("MCM", evaluations["MCM"], {})):
        assert len(fig.axes) == 5 and fig.get_size_inches()[0] * fig.dpi <= 1300
        assert len({ax.get_position().y0 for ax in fig.axes}) == 2
        assert _assert_legends_hide_nothing(fig) == 5


def test_coinciding_roc_curves_are_named_and_drawn_apart():
    """Two methods with identical scores: one note names them, and their lines differ in dash
    pattern and marker; a third, different method is in no note."""
    rng = np.random.default_rng(2)
    same = _evaluation("a", {"sun": rng.normal(1, 1, 40)}, {"sun": rng.normal(0, 1, 40)})
    twin = _evaluation("b", dict(same.stream_id_scores), dict(same.ood_scores))
    apart = _evaluation("c", {"sun": rng.normal(3, 1, 40)}, {"sun": rng.normal(0, 1, 40)})
    fig = figures.draw_roc({"NegLabel": same, "MCM": apart, "TANL": twin}, ["sun"], {"sun": "SUN"})
    (ax,) = fig.axes
    assert ax.get_legend().get_title().get_text().endswith("curves of NegLabel and TANL coincide")
    lines = {line.get_label().split(" (")[0]: line for line in ax.lines}
    assert lines["NegLabel"].get_linestyle() != lines["TANL"].get_linestyle()
    assert lines["NegLabel"].get_marker() != lines["TANL"].get_marker()
    assert lines["TANL"].get_linewidth() < lines["NegLabel"].get_linewidth()  # drawn later, inside the other
    np.testing.assert_array_equal(lines["NegLabel"].get_ydata(), lines["TANL"].get_ydata())
    # the tolerance: a curve one step away (one ID image of 40 moved) is not the same curve
    moved = dict(same.stream_id_scores)
    moved["sun"] = np.where(np.arange(40) == np.argmax(moved["sun"]), -10.0, moved["sun"])
    curves = {
        "a": roc_points(same.id_scores, same.ood_scores["sun"]),
        "b": roc_points(moved["sun"], same.ood_scores["sun"]),
    }
    assert coinciding_curves(curves) == [] and coinciding_curves(curves, tolerance=0.05) == [["a", "b"]]
    assert (
        "coincide"
        not in figures.draw_roc({"NegLabel": same, "MCM": apart}, ["sun"], {})
        .axes[0]
        .get_legend()
        .get_title()
        .get_text()
    )


def test_lam_chart_counts_images_in_whole_numbers():
    """Streams of four and five images (batches of four, the last one short): the x-axis ticks are
    whole image counts, where matplotlib's default prints 4.25."""
    fig = figures.draw_lam({"sun": [(4, 1.0), (5, 0.9)], "places": [(4, 1.0)]}, {})
    fig.canvas.draw()
    (ax,) = fig.axes
    ticks = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
    assert len(ticks) >= 2 and all(float(tick).is_integer() for tick in ticks)
    texts = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert texts and all(text.lstrip("−-").isdigit() for text in texts), texts


def test_lam_lines_that_coincide_are_named():
    """Streams whose ``lam`` stays at 1 draw one over the other: the legend names them; a stream
    that moves away is not named."""
    traces = {"sun": [(3, 1.0), (6, 1.0), (9, 1.0)], "places": [(3, 1.0), (6, 1.0)], "textures": [(3, 1.0), (6, 0.4)]}
    (ax,) = figures.draw_lam(traces, {"sun": "SUN", "places": "Places", "textures": "Textures"}).axes
    title = " ".join(ax.get_legend().get_title().get_text().split())
    assert title == "stream lines of SUN and Places coincide"
    lines = {line.get_label(): line for line in ax.lines}
    assert len({(lines[name].get_linestyle(), lines[name].get_marker()) for name in lines}) == 3


def test_every_axis_says_its_unit():
    evaluation = _tanl_like()
    (ax,) = figures.draw_roc({"tanl": evaluation}, ["sun"], {}).axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("OOD accepted (%)", "ID accepted (%)")
    assert ax.get_legend().get_title().get_text().startswith("AUROC (%)")
    assert max(ax.lines[0].get_ydata()) == 100  # drawn in percent, as the tables
    for ax in figures.draw_histograms("tanl", evaluation, {}).axes:
        assert ax.get_ylabel() == "images"


# Per <img>: its alt text, natural size and the size it is shown at on the page.
_IMAGES = """
return Array.from(document.querySelectorAll('img')).map(img => {
  const box = img.getBoundingClientRect();
  return [img.alt, img.complete, img.naturalWidth, img.naturalHeight, box.width, box.height];
});
"""


def test_every_chart_of_the_miniature_bench_shows_in_a_real_browser(tmp_path, tiny_openclip, mllm_server):
    """The report of a miniature bench (four OOD sets, TANL, ANTS with its ``lam`` chart) in headless
    Chromium: every picture loads, none is shown smaller than readable or wider than the page, the
    page has no console error. Each figure's screenshot is kept in NEGSPACE_TEST_SCREENSHOTS when
    set (to look at them)."""
    server, _ = mllm_server
    data = write_miniature(load_suite("imagenet"), tmp_path / "data", per_set=4)
    out = tmp_path / "out"
    assert (
        main(
            [
                "bench",
                "--suite",
                "imagenet",
                "--data-root",
                str(data),
                "--method",
                "mcm,neglabel,tanl,ants",
                "--no-count-check",
                "--batch-size",
                "2",
                "--ants-schedule",
                "scaled",
                "--mllm",
                server.spec,
                "--out",
                str(out),
                "--model",
                tiny_openclip.spec,
                "--weights",
                str(tiny_openclip.weights),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    keep = os.environ.get("NEGSPACE_TEST_SCREENSHOTS")
    driver = headless_chromium()
    try:
        driver.set_window_size(1400, 1000)
        driver.get((out / "report.html").resolve().as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        page_width = driver.execute_script("return document.documentElement.clientWidth")
        scroll_width = driver.execute_script("return document.documentElement.scrollWidth")
        images = driver.execute_script(_IMAGES)
        captions = driver.execute_script("return Array.from(document.querySelectorAll('p.caption'), p => p.innerText)")
        if keep:
            from selenium.webdriver.common.by import By

            folder = Path(keep)
            folder.mkdir(parents=True, exist_ok=True)
            for index, element in enumerate(driver.find_elements(By.CSS_SELECTOR, "img.fig")):
                driver.execute_script("arguments[0].scrollIntoView()", element)
                (folder / f"figure-{index:02d}.png").write_bytes(element.screenshot_as_png)
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(height + 200, 16000))
            (folder / "report.png").write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.quit()
    assert errors == []
    assert scroll_width <= page_width  # nothing wider than the window: no sideways scrolling
    figures = [
        image
        for image in images
        if image[0] in ("ROC curves", "lam over the stream") or image[0].endswith("histograms")
    ]
    assert len(figures) == 1 + 4 + 1, [image[0] for image in images]  # ROC, one per method, lam
    for alt, complete, natural_width, natural_height, shown_width, _shown_height in images:
        assert complete and natural_width > 0 and natural_height > 0, alt
        assert shown_width > 0 and shown_width <= page_width, alt
    for alt, _, natural_width, _, shown_width, _ in figures:
        # a figure is shown at least at 70% of its pixels: its 8-point text stays readable
        assert shown_width >= 0.7 * natural_width, (alt, natural_width, shown_width)
    # each kind of chart says what it shows and in which unit
    assert len(captions) == 3 and "AUROC in percent" in captions[0] and "(image counts)" in captions[1]
    assert "logit scale" in captions[1] and "0 to 1" in captions[2]
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["runs"]["imagenet"]) == {"mcm", "neglabel", "tanl", "ants"}
