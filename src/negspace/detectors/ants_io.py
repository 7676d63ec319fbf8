"""Saving and loading an ANTS negative space, and explanation rows for ``explanations.csv``.

A saved space is a folder of plain files::

    config.json            ANTSConfig, class names, corpus labels, format version, frozen flag
    id_text_features.npy   (K, D) float32
    neg_text_features.npy  (M, D) float32, the NegLabel corpus bank in its given order
    ens_texts.json         ENS sentences, oldest first
    ens_features.npy       (n_ens, D) float32
    vsnl.json              {"answers": {class index: [labels]}, "active": [...], "texts": [...]}
    vsnl_answer_features.npy  the answers' label features, classes in ascending index order
    vsnl_features.npy      (n_vsnl, D) the active VSNL bank
    state.json             thresholds, running sums, counters
    state_arrays.npz       score histogram, prediction counts
    pending.json/.npy      negatives waiting for a description (only when their images are paths)

Loading needs no MLLM and no text encoder: a loaded space scores any stream the same way the
saved detector would (``frozen`` by default when no MLLM is given).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace.detectors.ants_state import ANTSConfig, ANTSState
from negspace.detectors.base import as_unit_rows
from negspace.scoring import log_sum_exp

if TYPE_CHECKING:
    from negspace.detectors.ants import ANTS

log = logging.getLogger(__name__)

FORMAT = "negspace-ants/1"
_SCALARS = ("threshold", "sum_ens", "sum_vsnl", "n_negatives", "batches_seen", "images_seen", "ens_updates",
            "vsnl_updates", "mllm_requests", "failed_answers", "rejected_answers", "budget_exhausted", "version")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
    tmp.replace(path)


def save_ants(det: ANTS, directory: str | Path) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    st = det.state
    _write_json(out / "config.json", {
        "format": FORMAT,
        "config": det.config.as_dict(),
        "class_names": det.class_names,
        "neg_labels": det.neg_labels,
        "frozen": det.frozen,
    })
    _write_npy(out / "id_text_features.npy", det.id_text_features)
    _write_npy(out / "neg_text_features.npy", det.neg_text_features)
    _write_json(out / "ens_texts.json", st.ens_texts)
    _write_npy(out / "ens_features.npy", st.ens_bank)
    answered = sorted(st.vsnl_answers)
    _write_json(out / "vsnl.json", {
        "answers": {str(c): st.vsnl_answers[c] for c in answered},
        "active": st.vsnl_classes,
        "texts": st.vsnl_texts,
    })
    rows = [st.vsnl_answer_features[c] for c in answered]
    _write_npy(out / "vsnl_answer_features.npy",
               np.concatenate(rows) if rows else np.zeros((0, st.dim), np.float32))
    _write_npy(out / "vsnl_features.npy", st.vsnl_bank)
    scalars = {name: getattr(st, name) for name in _SCALARS}
    scalars["threshold"] = None if math.isnan(st.threshold) else st.threshold
    _write_json(out / "state.json", scalars)
    tmp = out / "state_arrays.tmp.npz"
    np.savez(tmp, score_hist=st.score_hist, neg_pred_counts=st.neg_pred_counts,
             all_pred_counts=st.all_pred_counts)
    tmp.replace(out / "state_arrays.npz")
    _save_pending(st, out)
    log.info("ANTS negative space saved to %s (%d ENS sentences, %d VSNL labels)",
             out, st.ens_count, len(st.vsnl_texts))
    return out


def _save_pending(st: ANTSState, out: Path) -> None:
    images = st.pending_images
    if st.pending_count and not all(img is None or isinstance(img, (str, Path)) for img in images):
        log.warning("ANTS: %d negatives awaiting description hold in-memory images and are not saved",
                    st.pending_count)
        images, count = [], 0
    else:
        count = st.pending_count
    _write_json(out / "pending.json", {
        "images": [None if img is None else str(img) for img in images] if count else [],
        "preds": np.concatenate(st.pending_preds).tolist() if count else [],
        "scores": np.concatenate(st.pending_scores).tolist() if count else [],
    })
    _write_npy(out / "pending_features.npy",
               np.concatenate(st.pending_features) if count else np.zeros((0, st.dim), np.float32))


def load_ants(cls: type[ANTS], directory: str | Path, text_encoder: Any = None, mllm: Any = None,
              frozen: bool | None = None) -> ANTS:
    src = Path(directory)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} holds no saved ANTS negative space (config.json is missing)")
    meta = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{src}/config.json has format {meta.get('format')!r}, expected {FORMAT!r}")
    config = ANTSConfig.from_dict(meta["config"])
    det = cls(np.load(src / "id_text_features.npy"), np.load(src / "neg_text_features.npy"), text_encoder, mllm,
              meta["class_names"], config, neg_labels=meta.get("neg_labels"))
    # as_unit_rows re-normalises (x / |x| with |x| ~ 1 +- 1 ulp): restore the saved rows exactly
    det.id_text_features = np.load(src / "id_text_features.npy")
    det.neg_text_features = np.load(src / "neg_text_features.npy")
    det._grouped_corpus = det.neg_text_features[det._corpus_order]
    st = det.state
    st.add_ens(json.loads((src / "ens_texts.json").read_text(encoding="utf-8")), np.load(src / "ens_features.npy"))
    vsnl = json.loads((src / "vsnl.json").read_text(encoding="utf-8"))
    answer_rows = np.load(src / "vsnl_answer_features.npy")
    offset = 0
    for key in sorted(vsnl["answers"], key=int):
        names = vsnl["answers"][key]
        st.vsnl_answers[int(key)] = list(names)
        st.vsnl_answer_features[int(key)] = answer_rows[offset : offset + len(names)]
        offset += len(names)
    st.vsnl_classes = [int(c) for c in vsnl["active"]]
    st.vsnl_texts = list(vsnl["texts"])
    bank = np.load(src / "vsnl_features.npy")
    st.vsnl_features = bank.astype(np.float32) if len(bank) else None
    scalars = json.loads((src / "state.json").read_text(encoding="utf-8"))
    for name in _SCALARS:
        setattr(st, name, scalars[name])
    st.threshold = math.nan if scalars["threshold"] is None else float(scalars["threshold"])
    with np.load(src / "state_arrays.npz") as arrays:
        st.score_hist = arrays["score_hist"].astype(np.int64)
        st.neg_pred_counts = arrays["neg_pred_counts"].astype(np.int64)
        st.all_pred_counts = arrays["all_pred_counts"].astype(np.int64)
    if (src / "pending.json").is_file():
        pending = json.loads((src / "pending.json").read_text(encoding="utf-8"))
        if pending["preds"]:
            st.pending_features.append(np.load(src / "pending_features.npy"))
            st.pending_images.extend(None if p is None else Path(p) for p in pending["images"])
            st.pending_preds.append(np.asarray(pending["preds"], dtype=np.int64))
            st.pending_scores.append(np.asarray(pending["scores"], dtype=np.float64))
    det.frozen = (mllm is None) if frozen is None else bool(frozen)
    # What building the space cost is history; this run's budget and count start at zero.
    det.space_mllm_calls = st.mllm_requests
    st.mllm_requests = 0
    det._initial_state = copy.deepcopy(st)
    det._bank_cache.clear()
    return det


def explain(det: ANTS, features: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Per image, the ``top`` negative texts that pulled it toward OOD: ``(text, source, weight)``.

    ``weight`` is the text's softmax mass over ``ID ∪ its bank`` (ungrouped), times the
    weight of that bank in the fused score (``lam`` for ENS, ``1 - lam`` for VSNL, the rest
    for the corpus bank a missing bank falls back to). Sources: ``ens``, ``vsnl``, ``corpus``.
    """
    image = as_unit_rows(features, "image features", det.state.dim)
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

def _explain_banks(det: ANTS) -> list[tuple[str, np.ndarray, list[str], float]]:
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


def explanation_rows(det: ANTS, features: np.ndarray, sample_ids: Sequence[str], scores: np.ndarray | None = None,
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
    explained = det.explain(features[order], top=top) if len(order) else []
    rows: list[dict[str, Any]] = []
    for rank, (i, texts) in enumerate(zip(order, explained), start=1):
        for text_rank, (text, source, weight) in enumerate(texts, start=1):
            rows.append({"rank": rank, "sample": sample_ids[i], "score": float(scores[i]),
                         "text_rank": text_rank, "text": text, "source": source, "weight": weight})
    return rows


EXPLANATION_COLUMNS = ("rank", "sample", "score", "text_rank", "text", "source", "weight")


def write_explanations_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write :func:`explanation_rows` output as CSV (UTF-8, header row)."""
    import csv

    path = Path(path)
    # Columns a caller adds (e.g. the OOD set of the stream) come first.
    extra = [key for key in (rows[0] if rows else {}) if key not in EXPLANATION_COLUMNS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*extra, *EXPLANATION_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return path
