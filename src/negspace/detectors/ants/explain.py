"""Why ANTS calls an image OOD: the negative texts that pulled it there, and ``explanations.csv``.

An online ANTS changes its negative space as the stream goes, so an image is explained with the
space that scored it: :class:`ExplanationKeeper` computes, as each batch is scored, the
explanations of the images that rank among the lowest-scored of the stream so far (a bounded
number), and :func:`explanation_rows` reads them back. An image whose explanation was not kept is
explained with the current space, and its rows say so (``space = final``) unless that space is the
one that scored it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from negspace.backend import to_numpy
from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.state import ANTSState
from negspace.scoring import as_unit_rows, log_sum_exp

EXPLAINED_IMAGES = 100  # lowest-scored images of a stream kept explained (eval's --explanations default)
EXPLAINED_TEXTS = 5  # texts kept per explained image
# ``space`` column of explanations.csv: the space that scored the image, or the final one (it did not)
SCORING_SPACE, FINAL_SPACE = "scoring", "final"
_CHANGING = "changing"  # a keeper's images were scored by a space that changed between them

Explanation = list[tuple[str, str, float]]


class ExplainableSpace(Protocol):
    """What an explanation reads from a detector (:class:`negspace.detectors.ants.ANTS`)."""

    config: ANTSConfig
    state: ANTSState
    id_text_features: np.ndarray
    neg_text_features: np.ndarray
    neg_labels: list[str] | None

    @property
    def lam(self) -> float: ...

    def score_fixed(self, features: np.ndarray) -> np.ndarray: ...


def explain(det: ExplainableSpace, features: np.ndarray, top: int = 5) -> list[Explanation]:
    """Per image, the ``top`` negative texts that pulled it toward OOD: ``(text, source, weight)``,
    with the detector's space as it is now.

    ``weight`` is the text's softmax mass over ``ID ∪ its bank`` (ungrouped), times the
    weight of that bank in the fused score (``lam`` for ENS, ``1 - lam`` for VSNL, the rest
    for the corpus bank a missing bank falls back to). Sources: ``ens``, ``vsnl``, ``corpus``.
    """
    image = as_unit_rows(to_numpy(features, np.float32), "image features", det.state.dim, copy=False)
    id_lse = log_sum_exp(image @ det.id_text_features.T, scale=1.0 / det.config.tau)
    blocks: list[tuple[np.ndarray, list[str], str]] = []
    for name, bank, texts, coef in _explain_banks(det):
        if coef <= 0 or len(bank) == 0:
            continue
        logits = (image @ bank.T).astype(np.float64) / det.config.tau
        total = np.logaddexp(id_lse, log_sum_exp(logits))
        blocks.append((coef * np.exp(logits - total[:, None]), texts, name))
    best = [_top_columns(weights, top) for weights, _, _ in blocks]
    out: list[Explanation] = []
    for row in range(len(image)):
        candidates: list[tuple[float, str, str]] = []
        for (weights, texts, name), columns in zip(blocks, best, strict=True):
            candidates.extend((float(weights[row, j]), texts[j], name) for j in columns[row])
        candidates.sort(key=lambda c: -c[0])
        out.append([(text, name, w) for w, text, name in candidates[:top]])
    return out


def _top_columns(weights: np.ndarray, top: int) -> list[np.ndarray]:
    """Per row, the columns of the ``top`` largest weights, largest first, ties to the lower column
    (a stable sort's order) without sorting whole rows: the corpus has 10,000 columns."""
    if top >= weights.shape[1]:
        return list(np.argsort(-weights, axis=1, kind="stable"))
    kth = np.partition(weights, weights.shape[1] - top, axis=1)[:, weights.shape[1] - top]  # top-th largest
    out = []
    for row, bound in zip(weights, kth, strict=True):
        columns = np.flatnonzero(row >= bound)  # the top ones, and any tied with the last of them
        out.append(columns[np.argsort(-row[columns], kind="stable")[:top]])
    return out


def _explain_banks(det: ExplainableSpace) -> list[tuple[str, np.ndarray, list[str], float]]:
    st, mode = det.state, det.config.mode
    corpus_texts = det.neg_labels or [f"corpus[{i}]" for i in range(len(det.neg_text_features))]
    coef = {"ens": 0.0, "vsnl": 0.0, "corpus": 0.0}
    share = {
        "ada": {"ens": det.lam, "vsnl": 1.0 - det.lam},
        "ens": {"ens": 1.0},
        "vsnl": {"vsnl": 1.0},
        "neglabel": {},
    }[mode]
    if mode == "neglabel":
        coef["corpus"] = 1.0
    for name, weight in share.items():
        size = st.ens_count if name == "ens" else len(st.vsnl_texts)
        coef[name if size else "corpus"] += weight
    return [
        ("ens", st.ens_bank, st.ens_texts, coef["ens"]),
        ("vsnl", st.vsnl_bank, st.vsnl_texts, coef["vsnl"]),
        ("corpus", det.neg_text_features, corpus_texts, coef["corpus"]),
    ]


class ExplanationKeeper:
    """The explanations of the ``capacity`` lowest-scored images since the last :meth:`clear`,
    each computed when its batch was scored, with the negative space that scored it.

    Bounded: at most ``2 * capacity`` images (the ``capacity`` lowest, then images tied with the
    last of them, so the choice among ties cannot depend on arrival order), each with its feature
    row's bytes and its score (what :func:`explanation_rows` finds it by) and ``top`` texts. A
    batch costs one explanation per image that enters; over a shuffled stream of ``n`` images
    that is about ``capacity * ln(n / capacity)`` images in all.
    """

    def __init__(self, capacity: int = EXPLAINED_IMAGES, top: int = EXPLAINED_TEXTS) -> None:
        if capacity < 0 or top < 1:
            raise ValueError(f"an explanation keeper needs capacity >= 0 and top >= 1, got {capacity} and {top}")
        self.capacity = capacity
        self.top = top
        self.clear()

    def clear(self) -> None:
        """Forget every kept explanation (a new stream or segment starts)."""
        self.scores = np.zeros(0, np.float64)
        self.arrivals = np.zeros(0, np.int64)
        self.keys: list[bytes] = []
        self.explanations: list[Explanation] = []
        self.arrived = 0
        # how the images since the last clear were scored: None (none yet), the one space
        # (a stamp from the detector) that scored them all, or _CHANGING
        self.scored_with: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    def offer(self, det: ExplainableSpace, features: np.ndarray, scores: np.ndarray) -> None:
        """A batch was just scored by ``det``'s current space: explain, with that space, the
        images among the lowest-scored so far; drop those pushed out."""
        self.scored_with = _CHANGING
        scores = np.asarray(scores, dtype=np.float64)
        if self.capacity == 0 or not len(scores):
            return
        merged = np.concatenate([self.scores, scores])
        if len(merged) <= self.capacity:
            enter = np.arange(len(scores))
        else:  # the capacity-th lowest so far (ties enter too)
            enter = np.flatnonzero(scores <= np.partition(merged, self.capacity - 1)[self.capacity - 1])
        if len(enter):
            rows = to_numpy(features, np.float32)[enter]
            self.keys += [row.tobytes() for row in rows]
            self.explanations += explain(det, rows, top=self.top)
            self.scores = np.concatenate([self.scores, scores[enter]])
            self.arrivals = np.concatenate([self.arrivals, self.arrived + enter])
        self.arrived += len(scores)
        self._prune()

    def _prune(self) -> None:
        if len(self.scores) <= self.capacity:
            return
        order = np.lexsort((self.arrivals, self.scores))
        last = self.scores[order[self.capacity - 1]]
        keep = order[: self.capacity]
        ties = order[self.capacity :][self.scores[order[self.capacity :]] == last][: self.capacity]
        keep = np.sort(np.concatenate([keep, ties]))
        self.scores, self.arrivals = self.scores[keep], self.arrivals[keep]
        self.keys = [self.keys[i] for i in keep]
        self.explanations = [self.explanations[i] for i in keep]

    def scored_by(self, stamp: Any) -> None:
        """A batch was scored by a space that does not learn from it, identified by ``stamp``."""
        if self.scored_with is None:
            self.scored_with = stamp
        elif self.scored_with != stamp:
            self.scored_with = _CHANGING

    def current_scored_all(self, stamp: Any) -> bool:
        """Whether the space ``stamp`` identifies scored every image since the last clear."""
        return self.scored_with is None or self.scored_with == stamp

    def lookup(self) -> dict[tuple[bytes, float], Explanation]:
        """The kept explanations by (float32 feature row bytes, score)."""
        return {
            (key, float(score)): texts
            for key, score, texts in zip(self.keys, self.scores, self.explanations, strict=True)
        }


def explanation_rows(
    det: ExplainableSpace,
    features: np.ndarray,
    sample_ids: Sequence[str],
    scores: np.ndarray | None = None,
    n_images: int = 100,
    top: int = 5,
    kept: ExplanationKeeper | None = None,
    current_scored_all: bool = True,
) -> list[dict[str, Any]]:
    """The ``n_images`` most OOD-looking samples (lowest score) with their top negative texts.

    ``scores`` are the scores the evaluation reported (online scores depend on when a sample was
    seen); without them the current space scores the samples. One row per (sample, text):
    ``rank, sample, score, text_rank, text, source, weight, space``. A sample is explained with
    the space that scored it when ``kept`` holds its explanation (found by its feature row and
    score) or when ``current_scored_all`` says the current space scored every sample; otherwise
    with the current (final) space, and its rows say ``space = final``.
    """
    features = np.asarray(features, dtype=np.float32)
    if len(sample_ids) != len(features):
        raise ValueError(f"{len(sample_ids)} sample ids for {len(features)} feature rows")
    found: dict[tuple[bytes, float], Explanation] = {}
    if scores is None:
        scores, current_scored_all = det.score_fixed(features), True
    elif kept is not None and top <= kept.top:
        found = kept.lookup()
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")[:n_images]
    explained: dict[int, tuple[Explanation, str]] = {}
    for i in order:
        texts = found.get((features[i].tobytes(), float(scores[i])))
        if texts is not None:
            explained[i] = (texts[:top], SCORING_SPACE)
    missing = [i for i in order if i not in explained]
    space = SCORING_SPACE if current_scored_all else FINAL_SPACE
    for i, texts in zip(missing, explain(det, features[missing], top=top) if missing else [], strict=True):
        explained[i] = (texts, space)
    rows: list[dict[str, Any]] = []
    for rank, i in enumerate(order, start=1):
        texts, space = explained[i]
        for text_rank, (text, source, weight) in enumerate(texts, start=1):
            rows.append(
                {
                    "rank": rank,
                    "sample": sample_ids[i],
                    "score": float(scores[i]),
                    "text_rank": text_rank,
                    "text": text,
                    "source": source,
                    "weight": weight,
                    "space": space,
                }
            )
    return rows


EXPLANATION_COLUMNS = ("rank", "sample", "score", "text_rank", "text", "source", "weight", "space")


def write_explanations_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write :func:`explanation_rows` output as CSV (UTF-8, header row)."""
    path = Path(path)
    # Columns a caller adds (e.g. the OOD set of the stream) come first.
    extra = [key for key in (rows[0] if rows else {}) if key not in EXPLANATION_COLUMNS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*extra, *EXPLANATION_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return path
