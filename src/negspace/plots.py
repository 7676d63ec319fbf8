"""Drawing shared by ``eval``'s and ``bench``'s reports (matplotlib, imported when drawing).

Rules every chart follows: a legend sits outside the data (under the axes or beside them), so it
covers no bar or curve; lines of several methods or streams differ by colour, dash pattern and
marker, so curves that coincide stay visible, and coinciding ROC curves are named in a note; axes
that count images have integer ticks; rates are in percent, as in the tables.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from negspace.metrics import threshold_at_id_recall

LEGEND_FONTSIZE = 8
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# Two ROC curves closer than this everywhere (as a fraction of the axis; 1 point in percent) draw
# as one line at the report's size: they are named in a note.
COINCIDE_TOLERANCE = 0.01


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes, cropped to what is drawn (a legend outside the axes is never cut);
    the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.05)
    pyplot().close(fig)
    return buffer.getvalue()


def line_style(index: int) -> dict[str, Any]:
    """The ``plot`` keywords of the ``index``-th line of a chart: a dash pattern, a hollow marker
    placed at a staggered distance along the line, and a width that shrinks with the index, so a
    later line drawn over an identical one leaves it visible around it."""
    return {
        "color": f"C{index % 10}",
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
        "marker": MARKERS[index % len(MARKERS)],
        "markevery": (0.013 * (index % 7), 0.09),
        "markersize": 5,
        "markerfacecolor": "none",
        "linewidth": max(2.6 - 0.2 * index, 0.9),
    }


def legend_below(ax: Any, ncol: int = 1, title: str | None = None, **kwargs: Any) -> Any:
    """The axes' legend placed under its tick labels and axis label, where it covers no data; the
    figure's layout (``tight_layout``) makes room for it."""
    from matplotlib.transforms import offset_copy

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    # The tick labels and axis label hang below the axes by a height in points that does not
    # depend on the axes' size, so the offset measured now holds after the layout moves the axes.
    below = ax.get_window_extent(renderer).y0 - ax.xaxis.get_tightbbox(renderer).y0
    points = below * 72 / fig.dpi + 3
    anchor = offset_copy(ax.transAxes, fig=fig, x=0, y=-points, units="points")
    return ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=anchor,
        ncol=ncol,
        fontsize=LEGEND_FONTSIZE,
        title=title,
        title_fontsize=LEGEND_FONTSIZE,
        frameon=False,
        **kwargs,
    )


def scores_squashed(scores: np.ndarray) -> bool:
    """Whether most probability-like scores sit so close to 0 or 1 that linear bins merge them."""
    if scores.size == 0 or scores.min() < 0 or scores.max() > 1:
        return False
    return bool(np.mean((scores < 1e-3) | (scores > 1 - 1e-3)) > 0.5)


def logit_axis(panels: Iterable[np.ndarray]) -> bool:
    """Whether a method's histograms go on the logit scale, decided once for all its panels (the
    scores of each panel, ID and OOD together): when every score is probability-like (in [0, 1])
    and in some panel they pile up at 0 and 1. One decision per method keeps one x-axis across
    its sets; the logit is monotone, so a panel whose scores are spread reads as well on it."""
    panels = [np.asarray(scores) for scores in panels if np.asarray(scores).size]
    if not panels or any(scores.min() < 0 or scores.max() > 1 for scores in panels):
        return False
    return any(scores_squashed(scores) for scores in panels)


def logit_of_scores(scores: np.ndarray) -> np.ndarray:
    """``log(s / (1 - s))`` in float64, finite for scores of exactly 0 or 1."""
    clipped = np.clip(scores.astype(np.float64), 1e-300, 1 - 1e-16)
    return np.log(clipped) - np.log1p(-clipped)


def histogram_xlabel(logit: bool) -> str:
    """The x-axis label of a score histogram on the logit or the raw scale."""
    return "logit of score s: log(s / (1 − s))" if logit else "score s (higher = more ID)"


def score_histogram(
    ax: Any,
    id_scores: np.ndarray,
    ood_scores: np.ndarray,
    id_label: str = "ID",
    ood_label: str = "OOD",
    bins: int = 40,
    logit: bool | None = None,
) -> None:
    """ID and OOD score histograms as image counts on one axis, with the threshold that keeps 95%
    of ID drawn as a line; on the logit scale when ``logit`` (``None``: when these scores pile up
    at 0 and 1, :func:`logit_axis`; pass one decision for all panels of a method), with at most
    four plain ticks (scores that differ in the fourth digit otherwise print as overlapping
    offsets), and the legend under the axes."""
    from matplotlib.ticker import MaxNLocator

    threshold = float(threshold_at_id_recall(id_scores))
    both = np.concatenate([id_scores, ood_scores])
    if logit is None:
        logit = logit_axis([both])
    where = threshold
    label = f"95% of ID kept: s = {threshold:.3g}"
    if logit:
        id_scores, ood_scores, both = logit_of_scores(id_scores), logit_of_scores(ood_scores), logit_of_scores(both)
        where = float(logit_of_scores(np.asarray([threshold]))[0])
        label = f"95% of ID kept: logit {where:.3g} (s = {threshold:.2g})"
    edges = np.linspace(both.min(), both.max(), bins + 1) if both.size and both.max() > both.min() else 10
    ax.hist(id_scores, bins=edges, alpha=0.6, label=id_label)
    ax.hist(ood_scores, bins=edges, alpha=0.6, label=ood_label)
    ax.axvline(where, color="black", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel(histogram_xlabel(logit), fontsize=9)
    ax.set_ylabel("images")
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    legend_below(ax)


def roc_points(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve (ID positive) as fractions: OOD accepted, ID accepted."""
    from sklearn.metrics import roc_curve

    labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([id_scores, ood_scores]))
    return fpr, tpr


def _groups(names: Sequence[str], close: Any) -> list[list[str]]:
    """The groups (two or more names, in order) linked by ``close(a, b)``, transitively."""
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if root(a) != root(b) and close(a, b):
                parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(root(name), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def coinciding_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], tolerance: float = COINCIDE_TOLERANCE
) -> list[list[str]]:
    """Groups (two or more, in the mapping's order) of ROC curves ``(fpr, tpr)`` that lie within
    ``tolerance`` of each other everywhere.

    A ROC curve rises in both coordinates, so along ``u = fpr + tpr`` it is a function
    ``v(u) = fpr - tpr``, vertical steps included: two curves are compared as those functions on
    the union of their points (half of ``v``'s gap is how far one curve is shifted from the other
    along an axis)."""
    rotated = {
        name: (
            np.asarray(f, np.float64) + np.asarray(t, np.float64),
            np.asarray(f, np.float64) - np.asarray(t, np.float64),
        )
        for name, (f, t) in curves.items()
    }

    def close(a: str, b: str) -> bool:
        (ua, va), (ub, vb) = rotated[a], rotated[b]
        grid = np.union1d(ua, ub)
        return bool(np.max(np.abs(np.interp(grid, ua, va) - np.interp(grid, ub, vb)), initial=0.0) <= 2 * tolerance)

    return _groups(list(curves), close)


def coinciding_lines(
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], tolerance: float = COINCIDE_TOLERANCE
) -> list[list[str]]:
    """Groups of lines ``(x, y)`` (x increasing) that lie within ``tolerance`` of each other in
    ``y`` wherever both are drawn: one hides the other there."""
    points = {name: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for name, (x, y) in lines.items()}

    def close(a: str, b: str) -> bool:
        (xa, ya), (xb, yb) = points[a], points[b]
        if not len(xa) or not len(xb):
            return False
        low, high = max(xa[0], xb[0]), min(xa[-1], xb[-1])
        grid = np.union1d(xa, xb)
        grid = grid[(grid >= low) & (grid <= high)]
        return bool(grid.size) and bool(np.max(np.abs(np.interp(grid, xa, ya) - np.interp(grid, xb, yb))) <= tolerance)

    return _groups(list(lines), close)


def coincide_note(groups: Sequence[Sequence[str]], what: str = "curves") -> str:
    """``curves of A and B coincide`` (one clause per group), or ``""``."""

    def listed(names: Sequence[str]) -> str:
        return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]

    return "; ".join(f"{what} of {listed(group)} coincide" for group in groups)


def roc_panel(
    ax: Any,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    labels: Mapping[str, str],
    legend_title: str = "AUROC (%)",
    styles: Sequence[int] | None = None,
) -> list[list[str]]:
    """ROC curves (ID positive, in percent) of ``curves`` (name -> ID scores, OOD scores), one
    line style per name (``styles``: the :func:`line_style` index of each, so a name keeps its
    style across panels; default: their order), the 95%-ID line, and the legend (``labels``:
    name -> its entry) under the axes, ending with a note naming the curves that coincide;
    returns those groups."""
    import textwrap

    points = {name: roc_points(*scores) for name, scores in curves.items()}
    styles = list(range(len(points))) if styles is None else list(styles)
    for index, (name, (fpr, tpr)) in zip(styles, points.items(), strict=False):
        ax.plot(100 * fpr, 100 * tpr, label=labels.get(name, name), **line_style(index))
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(95, color="black", linewidth=0.6, linestyle="--")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("OOD accepted (%)")
    ax.set_ylabel("ID accepted (%)")
    groups = coinciding_curves(points)
    note = coincide_note(groups)
    title = legend_title + ("\n" + textwrap.fill(note, 44) if note else "")
    legend_below(ax, ncol=2 if len(points) > 3 else 1, title=title, alignment="left")
    return groups
