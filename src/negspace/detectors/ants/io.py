"""An ANTS negative space as a folder of plain files, written and read back exactly.

    config.json            format version, ANTSConfig, class names, corpus labels, frozen flag
    id_text_features.npy   (K, D) float32
    neg_text_features.npy  (M, D) float32, the NegLabel corpus bank in its given order
    state.json             counters, thresholds, the ENS sentences and VSNL answers (readable)
    state.npz              the banks' features, histograms, prediction counts, rings, pooled negatives

Reading needs no MLLM and no text encoder. This module knows the files only; the detector builds
itself from a :class:`SavedSpace` (:meth:`negspace.detectors.ants.ANTS.load`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.state import ANTSState
from negspace.jsonio import to_json

log = logging.getLogger(__name__)

FORMAT = "negspace-ants/2"


@dataclass
class SavedSpace:
    """The contents of a saved negative space."""

    config: ANTSConfig
    class_names: list[str]
    neg_labels: list[str] | None
    id_text_features: np.ndarray
    neg_text_features: np.ndarray
    state: ANTSState
    frozen: bool


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_json(data, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
    tmp.replace(path)


def save_space(directory: str | Path, space: SavedSpace) -> Path:
    """Write ``space`` under ``directory`` (created); each file is replaced atomically."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "config.json",
        {
            "format": FORMAT,
            "config": space.config.as_dict(),
            "class_names": space.class_names,
            "neg_labels": space.neg_labels,
            "frozen": space.frozen,
        },
    )
    _write_npy(out / "id_text_features.npy", space.id_text_features)
    _write_npy(out / "neg_text_features.npy", space.neg_text_features)
    doc, arrays = space.state.to_files()
    if doc["pending_dropped"]:
        log.warning(
            "ANTS: %d negatives awaiting description hold in-memory images and are not saved", doc["pending_dropped"]
        )
    _write_json(out / "state.json", doc)
    tmp = out / "state.tmp.npz"
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # stub: **arrays could fill allow_pickle (keys are state names)
    tmp.replace(out / "state.npz")
    log.info(
        "ANTS negative space saved to %s (%d ENS sentences, %d VSNL labels)",
        out,
        space.state.ens_count,
        len(space.state.vsnl_texts),
    )
    return out


def read_space(directory: str | Path) -> SavedSpace:
    """Read a folder written by :func:`save_space`; raises ``FileNotFoundError`` or ``ValueError``."""
    src = Path(directory)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} holds no saved ANTS negative space (config.json is missing)")
    meta = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{src}/config.json has format {meta.get('format')!r}, expected {FORMAT!r}")
    with np.load(src / "state.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    state = ANTSState.from_files(json.loads((src / "state.json").read_text(encoding="utf-8")), arrays)
    neg_labels: Sequence[str] | None = meta.get("neg_labels")
    return SavedSpace(
        config=ANTSConfig.from_dict(meta["config"]),
        class_names=list(meta["class_names"]),
        neg_labels=list(neg_labels) if neg_labels is not None else None,
        id_text_features=np.load(src / "id_text_features.npy"),
        neg_text_features=np.load(src / "neg_text_features.npy"),
        state=state,
        frozen=bool(meta.get("frozen", False)),
    )
