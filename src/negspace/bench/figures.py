"""The report's pictures as PNG/JPEG bytes (matplotlib, PIL): ROC curves, score histograms,
``lam`` over the stream, image thumbnails."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from negspace.evaluation import Evaluation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def roc_figure(evaluations: Mapping[str, Evaluation], ood_names: Sequence[str], titles: Mapping[str, str]) -> bytes:
    """One panel per OOD set, one ROC curve (ID positive) per method."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ood_names), figsize=(3.6 * len(ood_names), 3.6), dpi=90, squeeze=False)
    styles = ["-", "--", "-.", ":"]  # identical curves stay visible: one dash pattern per method
    for ax, name in zip(axes[0], ood_names):
        for index, (method, evaluation) in enumerate(evaluations.items()):
            if name not in evaluation.ood_scores:
                continue
            id_scores, ood = evaluation.id_scores_for(name), evaluation.ood_scores[name]
            labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood))])
            fpr, tpr, _ = roc_curve(labels, np.concatenate([id_scores, ood]))
            ax.plot(fpr, tpr, linestyle=styles[index % len(styles)], linewidth=2.2 - 0.3 * (index % 4),
                    label=f"{method} ({100 * evaluation.results[name].auroc:.1f})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.axhline(0.95, color="black", linewidth=0.6, linestyle="--")
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_xlabel("OOD accepted")
        ax.legend(fontsize=9, loc="lower right", title="AUROC", title_fontsize=9)
    axes[0][0].set_ylabel("ID accepted")
    fig.tight_layout()
    return _png(fig)


def histogram_figure(method: str, evaluation: Evaluation, titles: Mapping[str, str]) -> bytes:
    """ID and OOD score histograms of one method, one panel per OOD set, as image counts, with the
    threshold that keeps 95% of ID (logit scale when the scores pile up at 0 and 1, as the
    negative-label scores do)."""
    from matplotlib.ticker import MaxNLocator

    from negspace.metrics import threshold_at_id_recall
    from negspace.report import logit_of_scores, scores_squashed

    plt = _pyplot()
    names = list(evaluation.ood_scores)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 2.8), dpi=90, squeeze=False)
    for ax, name in zip(axes[0], names):
        id_scores, ood = evaluation.id_scores_for(name), evaluation.ood_scores[name]
        threshold = np.asarray([threshold_at_id_recall(id_scores)])
        both = np.concatenate([id_scores, ood])
        squashed = scores_squashed(both)
        if squashed:
            id_scores, ood, both = logit_of_scores(id_scores), logit_of_scores(ood), logit_of_scores(both)
            threshold = logit_of_scores(threshold)
        bins = np.linspace(both.min(), both.max(), 41) if both.max() > both.min() else 10
        ax.hist(id_scores, bins=bins, alpha=0.6, label="ID")
        ax.hist(ood, bins=bins, alpha=0.6, label="OOD")
        ax.axvline(float(threshold[0]), color="black", linestyle="--", linewidth=1, label="95% ID kept")
        ax.set_title(f"{method}: {titles.get(name, name)}", fontsize=10)
        ax.set_xlabel("logit of the score" if squashed else "score")
        ax.set_ylabel("images")
        ax.xaxis.set_major_locator(MaxNLocator(4))  # scores that differ in the 4th digit: few readable ticks
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def lam_figure(traces: Mapping[str, Sequence[tuple[int, float]]], titles: Mapping[str, str]) -> bytes:
    """ANTS's adaptive weight ``lam`` after each batch, one line per stream."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    for name, trace in traces.items():
        if trace:
            seen, lam = zip(*trace)
            ax.plot(seen, lam, marker="o", markersize=3, label=titles.get(name, name))  # one point shows too
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("images seen in the stream")
    ax.set_ylabel("lam (weight of ENS)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


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
