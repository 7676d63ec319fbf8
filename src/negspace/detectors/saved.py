"""A detector as a folder of plain files, and back.

    detector.json   {"format": "negspace-detector/1", "method", "params", "extra", "frozen", ...}
    NAME.npy        one array per name in "arrays" (text features; for TANL and AdaNeg also
                    the state as it was when saved)

JSON and ``.npy`` only (no pickle): a saved detector can be read by anything that reads NumPy
files. ANTS writes its richer negative-space format (:mod:`negspace.detectors.ants.io`);
:func:`negspace.methods.load_detector` reads both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from negspace.jsonio import to_json

FORMAT = "negspace-detector/1"
FILE = "detector.json"


@dataclass
class SavedDetector:
    """What a detector writes: its method name, constructor parameters, arrays and extras."""

    method: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)  # JSON values: labels, ring positions, counters
    frozen: bool = False


def constructor_params(params: dict[str, Any]) -> dict[str, Any]:
    """A detector's ``get_params()`` without what it derives from its arrays (``n_*`` sizes) or
    from where it runs (``backend``, ``device``: chosen again at load)."""
    return {k: v for k, v in params.items() if not k.startswith("n_") and k not in ("backend", "device")}


def write_saved(directory: str | Path, saved: SavedDetector) -> Path:
    """Write ``saved`` under ``directory`` (created); each file replaced atomically."""
    from negspace import __version__

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in saved.arrays.items():
        tmp = out / f"{name}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
        tmp.replace(out / f"{name}.npy")
    doc = {
        "format": FORMAT,
        "method": saved.method,
        "negspace_version": __version__,
        "frozen": saved.frozen,
        "params": saved.params,
        "arrays": sorted(saved.arrays),
        "extra": saved.extra,
    }
    tmp = out / f"{FILE}.tmp"
    tmp.write_text(to_json(doc, indent=1), encoding="utf-8")
    tmp.replace(out / FILE)
    return out


def read_saved(directory: str | Path) -> SavedDetector:
    """Read a folder written by :func:`write_saved`.

    Raises:
        ValueError: no saved detector there, another format, or a missing array file.
    """
    folder = Path(directory)
    path = folder / FILE
    if not path.is_file():
        raise ValueError(f"{folder} holds no saved detector ({FILE} is missing)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is in format {doc.get('format')!r}, not {FORMAT}")
    missing = [key for key in ("method", "params", "arrays") if key not in doc]
    if missing or not isinstance(doc["params"], dict) or not isinstance(doc["arrays"], list):
        raise ValueError(f"{path} is damaged: {', '.join(missing) or 'params or arrays'} missing or malformed")
    arrays = {}
    for name in doc["arrays"]:
        file = folder / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"{file} is missing from the saved detector")
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{file} cannot be read ({err})") from None
    return SavedDetector(doc["method"], doc["params"], arrays, doc.get("extra", {}), bool(doc.get("frozen", False)))


PROVENANCE = "provenance.json"  # beside a detector saved by a run: its model and ID threshold


def write_provenance(folder: Path, info: dict[str, Any]) -> None:
    """What `negspace score` needs to know about a saved detector: its model and ID threshold."""
    (Path(folder) / PROVENANCE).write_text(to_json(info, indent=1), encoding="utf-8")


def read_provenance(folder: Path) -> dict[str, Any]:
    """The provenance saved beside a detector (empty when there is none)."""
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return {}
    try:
        provenance: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return provenance
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err})") from None
