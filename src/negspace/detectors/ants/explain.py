"""Why ANTS calls an image OOD: the negative texts that pulled it there, and ``explanations.csv``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.state import ANTSState
from negspace.backend import to_numpy
from negspace.detectors.base import as_unit_rows
from negspace.scoring import log_sum_exp


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


def explain(det: ExplainableSpace, features: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Per image, the ``top`` negative texts that pulled it toward OOD: ``(text, source, weight)``.

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
    out: list[list[tuple[str, str, float]]] = []
    for row in range(len(image)):
        candidates: list[tuple[float, str, str]] = []
        for weights, texts, name in blocks:
            best = np.argsort(-weights[row], kind="stable")[:top]
            candidates.extend((float(weights[row, j]), texts[j], name) for j in best)
        candidates.sort(key=lambda c: -c[0])
        out.append([(text, name, w) for w, text, name in candidates[:top]])
    return out


def _explain_banks(det: ExplainableSpace) -> list[tuple[str, np.ndarray, list[str], float]]:
    st, mode = det.state, det.config.mode
    corpus_texts = det.neg_labels or [f"corpus[{i}]" for i in range(len(det.neg_text_features))]
    coef = {"ens": 0.0, "vsnl": 0.0, "corpus": 0.0}
    share = {"ada": {"ens": det.lam, "vsnl": 1.0 - det.lam}, "ens": {"ens": 1.0},
             "vsnl": {"vsnl": 1.0}, "neglabel": {}}[mode]
    if mode == "neglabel":
        coef["corpus"] = 1.0
    for name, weight in share.items():
        size = st.ens_count if name == "ens" else len(st.vsnl_texts)
        coef[name if size else "corpus"] += weight
    return [("ens", st.ens_bank, st.ens_texts, coef["ens"]),
            ("vsnl", st.vsnl_bank, st.vsnl_texts, coef["vsnl"]),
            ("corpus", det.neg_text_features, corpus_texts, coef["corpus"])]


def explanation_rows(det: ExplainableSpace, features: np.ndarray, sample_ids: Sequence[str], scores: np.ndarray | None = None,
                     n_images: int = 100, top: int = 5) -> list[dict[str, Any]]:
    """The ``n_images`` most OOD-looking samples (lowest score) with their top negative texts.

    ``scores`` are the scores the evaluation reported (online scores depend on when a sample was
    seen); without them the current banks score the samples. One row per (sample, text):
    ``rank, sample, score, text_rank, text, source, weight``. Explanations use the detector's
    final banks.
    """
    features = np.asarray(features, dtype=np.float32)
    if len(sample_ids) != len(features):
        raise ValueError(f"{len(sample_ids)} sample ids for {len(features)} feature rows")
    if scores is None:
        scores = det.score_fixed(features)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")[:n_images]
    explained = explain(det, features[order], top=top) if len(order) else []
    rows: list[dict[str, Any]] = []
    for rank, (i, texts) in enumerate(zip(order, explained), start=1):
        for text_rank, (text, source, weight) in enumerate(texts, start=1):
            rows.append({"rank": rank, "sample": sample_ids[i], "score": float(scores[i]),
                         "text_rank": text_rank, "text": text, "source": source, "weight": weight})
    return rows


EXPLANATION_COLUMNS = ("rank", "sample", "score", "text_rank", "text", "source", "weight")


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
