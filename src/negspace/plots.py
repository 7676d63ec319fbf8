"""Drawing shared by ``eval``'s and ``bench``'s reports (matplotlib, imported when drawing)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from negspace.metrics import threshold_at_id_recall


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def scores_squashed(scores: np.ndarray) -> bool:
    """Whether most probability-like scores sit so close to 0 or 1 that linear bins merge them."""
    if scores.size == 0 or scores.min() < 0 or scores.max() > 1:
        return False
    return bool(np.mean((scores < 1e-3) | (scores > 1 - 1e-3)) > 0.5)


def logit_of_scores(scores: np.ndarray) -> np.ndarray:
    """``log(s / (1 - s))`` in float64, finite for scores of exactly 0 or 1."""
    clipped = np.clip(scores.astype(np.float64), 1e-300, 1 - 1e-16)
    return np.log(clipped) - np.log1p(-clipped)


def score_histogram(ax: Any, id_scores: np.ndarray, ood_scores: np.ndarray, id_label: str = "ID",
                    ood_label: str = "OOD", bins: int = 40) -> None:
    """ID and OOD score histograms as image counts on one axis, with the threshold that keeps 95%
    of ID drawn as a line; on the logit scale when the scores pile up at 0 and 1 (as the
    negative-label scores do), with at most four plain ticks (scores that differ in the fourth
    digit otherwise print as overlapping offsets)."""
    from matplotlib.ticker import MaxNLocator

    threshold = np.asarray([threshold_at_id_recall(id_scores)])
    both = np.concatenate([id_scores, ood_scores])
    squashed = scores_squashed(both)
    if squashed:
        id_scores, ood_scores = logit_of_scores(id_scores), logit_of_scores(ood_scores)
        both, threshold = logit_of_scores(both), logit_of_scores(threshold)
    edges = np.linspace(both.min(), both.max(), bins + 1) if both.size and both.max() > both.min() else 10
    ax.hist(id_scores, bins=edges, alpha=0.6, label=id_label)
    ax.hist(ood_scores, bins=edges, alpha=0.6, label=ood_label)
    ax.axvline(float(threshold[0]), color="black", linestyle="--", linewidth=1,
               label=f"95% of ID kept: {float(threshold[0]):.3g}")
    ax.set_xlabel("logit of the score, log(s / (1 - s))" if squashed else "score (higher = more in-distribution)")
    ax.set_ylabel("images")
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.legend(fontsize=8, loc="upper center")  # a fixed place: "best" is slow on large sets
