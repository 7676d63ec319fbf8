"""The report's pictures as PNG/JPEG bytes (matplotlib, PIL): ROC curves, score histograms,
``lam`` over the stream, image thumbnails."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from negspace.evaluation import Evaluation
from negspace.plots import png_bytes, pyplot, score_histogram


def roc_figure(evaluations: Mapping[str, Evaluation], ood_names: Sequence[str], titles: Mapping[str, str]) -> bytes:
    """One panel per OOD set, one ROC curve (ID positive) per method."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
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
    return png_bytes(fig)


def histogram_figure(method: str, evaluation: Evaluation, titles: Mapping[str, str]) -> bytes:
    """ID and OOD score histograms of one method, one panel per OOD set (:func:`score_histogram`)."""
    names = list(evaluation.ood_scores)
    fig, axes = pyplot().subplots(1, len(names), figsize=(3.6 * len(names), 2.8), dpi=90, squeeze=False)
    for ax, name in zip(axes[0], names):
        score_histogram(ax, evaluation.id_scores_for(name), evaluation.ood_scores[name])
        ax.set_title(f"{method}: {titles.get(name, name)}", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def lam_figure(traces: Mapping[str, Sequence[tuple[int, float]]], titles: Mapping[str, str]) -> bytes:
    """ANTS's adaptive weight ``lam`` after each batch, one line per stream."""
    plt = pyplot()
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
    return png_bytes(fig)


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
