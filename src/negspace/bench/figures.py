"""The report's pictures as PNG/JPEG bytes (matplotlib, PIL): ROC curves, score histograms,
``lam`` over the stream, image thumbnails."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from negspace.evaluation import Evaluation
from negspace.plots import (
    LEGEND_FONTSIZE,
    coincide_note,
    coinciding_lines,
    line_style,
    logit_axis,
    png_bytes,
    pyplot,
    roc_panel,
    score_histogram,
)

MAX_COLUMNS = 4  # four 3.6-inch panels at 90 dpi fit the report's 1400-pixel page at full size


def _panels(count: int, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``count`` panels 3.6 inches wide, at most :data:`MAX_COLUMNS` a row (five sets:
    three and two, so no picture is shrunk below its pixels on the page)."""
    columns = count if count <= MAX_COLUMNS else -(-count // -(-count // MAX_COLUMNS))
    rows = -(-count // columns)
    fig, axes = pyplot().subplots(rows, columns, figsize=(3.6 * columns, height * rows), dpi=90, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.remove()
    return fig, flat[:count]


def draw_roc(evaluations: Mapping[str, Evaluation], ood_names: Sequence[str], titles: Mapping[str, str]) -> Any:
    """The ROC figure (a matplotlib ``Figure``): one panel per OOD set, one curve (ID positive, in
    percent) per method, each method in the same style on every panel, its AUROC in the legend
    under the panel with a note naming the curves that coincide (:func:`negspace.plots.roc_panel`)."""
    fig, axes = _panels(len(ood_names), 4.2)
    for ax, name in zip(axes, ood_names, strict=True):
        # every method keeps its place in the order, so its style is the same on every panel
        curves, labels = {}, {}
        for method, evaluation in evaluations.items():
            if name in evaluation.ood_scores:
                curves[method] = (evaluation.id_scores_for(name), evaluation.ood_scores[name])
                labels[method] = f"{method} ({100 * evaluation.results[name].auroc:.1f})"
        roc_panel(ax, curves, labels, styles=[list(evaluations).index(m) for m in curves])
        ax.set_title(titles.get(name, name), fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(evaluations: Mapping[str, Evaluation], ood_names: Sequence[str], titles: Mapping[str, str]) -> bytes:
    """:func:`draw_roc` as PNG bytes."""
    return png_bytes(draw_roc(evaluations, ood_names, titles))


def draw_histograms(method: str, evaluation: Evaluation, titles: Mapping[str, str]) -> Any:
    """ID and OOD score histograms of one method (a matplotlib ``Figure``), one panel per OOD set
    (:func:`score_histogram`), all on one x-axis scale: logit or raw is decided once for the
    method (:func:`negspace.plots.logit_axis`), never per panel."""
    names = list(evaluation.ood_scores)
    logit = logit_axis(np.concatenate([evaluation.id_scores_for(name), evaluation.ood_scores[name]]) for name in names)
    fig, axes = _panels(len(names), 3.3)
    for ax, name in zip(axes, names, strict=True):
        score_histogram(ax, evaluation.id_scores_for(name), evaluation.ood_scores[name], logit=logit)
        ax.set_title(f"{method}: {titles.get(name, name)}", fontsize=10)
    fig.tight_layout()
    return fig


def histogram_figure(method: str, evaluation: Evaluation, titles: Mapping[str, str]) -> bytes:
    """:func:`draw_histograms` as PNG bytes."""
    return png_bytes(draw_histograms(method, evaluation, titles))


def draw_lam(traces: Mapping[str, Sequence[tuple[int, float]]], titles: Mapping[str, str]) -> Any:
    """ANTS's adaptive weight ``lam`` after each batch, one line per stream (a matplotlib
    ``Figure``): image counts as integer ticks, streams told apart by style (their lines often
    coincide, at 1), the legend beside the axes."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3), dpi=90)
    lines: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for name, trace in traces.items():
        if trace:
            xs, ys = zip(*trace, strict=True)
            lines[titles.get(name, name)] = (xs, ys)
    for index, (title, (seen, lam)) in enumerate(lines.items()):
        ax.plot(seen, lam, label=title, **{**line_style(index), "markevery": None})
    ax.set_ylim(-0.04, 1.04)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images seen in the stream")
    ax.set_ylabel("lam (weight of ENS, 0 to 1)")
    note = coincide_note(coinciding_lines(lines), what="lines")
    ax.legend(
        fontsize=LEGEND_FONTSIZE,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
        title="stream" + ("\n" + textwrap.fill(note, 28) if note else ""),
        title_fontsize=LEGEND_FONTSIZE,
        alignment="left",
    )
    fig.tight_layout()
    return fig


def lam_figure(traces: Mapping[str, Sequence[tuple[int, float]]], titles: Mapping[str, str]) -> bytes:
    """:func:`draw_lam` as PNG bytes."""
    return png_bytes(draw_lam(traces, titles))


def thumbnail(path: str | Path, side: int = 128) -> bytes | None:
    """A JPEG thumbnail of an image file, or ``None`` when it cannot be read."""
    from negspace.data import load_rgb
    from negspace.errors import UnreadableImageError

    try:
        image = load_rgb(Path(path))
    except (UnreadableImageError, OSError):
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
