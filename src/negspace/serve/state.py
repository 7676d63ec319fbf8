"""The state of an adaptive detector while it serves: frozen copies to score with, and snapshots.

A snapshot is a saved detector (``det.save``, the files ``load_detector`` reads) written into a
temporary folder, every file and the folder synced to disk, then renamed to
``snapshot-NNNNNNNN`` in one step: a reader (a restart, after a crash or a ``kill -9``) sees a
whole snapshot or none, never a half-written one. Beside the detector's files,
``serve_state.json`` records the counters and which detector and model the state belongs to, so
that a state folder is never resumed with another detector. The two newest snapshots are kept;
an older one is renamed away before it is removed, so a kill during the removal never leaves a
snapshot with files missing.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from negspace.errors import NegspaceError, arg
from negspace.jsonio import to_json

log = logging.getLogger("negspace")

FORMAT = "negspace-serve-state/1"
META = "serve_state.json"
PREFIX = "snapshot-"
TMP_PREFIX = ".tmp-"
LOCK = ".lock"
KEEP = 2  # snapshots kept: the newest and the one before it


# ------------------------------------------------------------------------------ frozen copies


def frozen_copy(detector: Any) -> Any:
    """A frozen copy of an online detector, scoring with its state as it is now; later updates
    of ``detector`` leave the copy untouched.

    The learned state (the detector's state objects, counters, rings, banks) is copied. Shared,
    not copied: the arrays the detector holds directly (text features, corpora: every detector
    replaces them, never writes into them, and keeps what it learns in its state objects), and
    what is not state (the encoder, the MLLM client, the inverter, thread pools and pending MLLM
    jobs), which the frozen copy never uses.
    """
    clone = object.__new__(type(detector))
    memo: dict[int, Any] = {id(detector): clone}
    for name, value in vars(detector).items():
        clone.__dict__[name] = _copied(value, memo)
    clone.freeze()
    return clone


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    """``value`` deep-copied when it is state (plain data or a detector's own state object),
    else shared (see :func:`frozen_copy`)."""
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__
    if module in ("builtins", "collections", "numpy") or module.startswith("negspace.detectors"):
        try:
            return copy.deepcopy(value, memo)
        except (TypeError, copy.Error):  # pending futures, locks: not state, never used by a copy
            return value
    return value


def state_counters(detector: Any) -> dict[str, float]:
    """What an adaptive detector's state holds now, as numbers (for ``/metrics`` and
    ``/v1/detector``): learned rows, queue fills, batches, and for ANTS its banks, ``lam`` and
    MLLM requests and failures."""
    found: dict[str, Any] = {}
    params = detector.get_params()
    for key in ("n_learned", "n_buffered", "inverted"):
        if key in params:
            found[key] = params[key]
    state = getattr(detector, "state_", None)
    if state is not None:
        for key in ("batches", "cached", "threshold"):
            found[key] = getattr(state, key, None)
        for ring in ("id_queue", "ood_queue"):
            if hasattr(getattr(state, ring, None), "count"):
                found[f"{ring}_rows"] = getattr(state, ring).count
    if hasattr(detector, "run_info"):  # ANTS
        info = detector.run_info()
        for key in (
            "ens_size",
            "vsnl_size",
            "lam",
            "ens_updates",
            "vsnl_updates",
            "negatives_mined",
            "negatives_described",
            "negatives_pooled",
            "mllm_requests",
            "mllm_failed_answers",
            "mllm_rejected_answers",
            "mllm_budget_exhausted",
        ):
            found[key] = info.get(key)
    return {
        key: float(value)
        for key, value in found.items()
        if isinstance(value, (int, float, np.number)) and np.isfinite(value)
    }


# ------------------------------------------------------------------------------ snapshots


class SnapshotStore:
    """Snapshots of one detector's state in ``folder`` (see the module docstring).

    ``identity`` (the source detector's digest and the model's fingerprint) is written into every
    snapshot and must match to resume. The folder is locked while a server uses it (released by
    the system when the process ends, however it ends).
    """

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = identity
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NegspaceError(f"{arg('state_dir')} {folder} cannot be created ({err.strerror}).") from None
        self._lock_handle = self._lock()
        for leftover in self.folder.glob(TMP_PREFIX + "*"):  # a snapshot cut short by a crash
            shutil.rmtree(leftover, ignore_errors=True)
        self._prune()  # a crash between a rename and the pruning leaves one more

    def _prune(self) -> None:
        # Renamed out of the snapshot names first, in one step, then removed: a kill during the
        # removal (file by file) leaves a ``.tmp-`` folder the next start clears, never a
        # snapshot whose record remains while its arrays are gone.
        for old in self.snapshots()[KEEP:]:
            doomed = self.folder / f"{TMP_PREFIX}drop-{old.name}-{os.getpid()}"
            try:
                old.rename(doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)

    def _lock(self) -> Any:
        import fcntl

        handle = (self.folder / LOCK).open("a+", encoding="utf-8")  # held while serving
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise NegspaceError(
                f"{arg('state_dir')} {self.folder} is in use by another server; give each server its own folder."
            ) from None
        return handle

    def close(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def snapshots(self) -> list[Path]:
        """Complete snapshots, newest first."""
        found = [p for p in self.folder.glob(PREFIX + "*") if p.is_dir() and p.name[len(PREFIX) :].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest snapshot and its record, or ``None``; one of another detector or model is refused."""
        for path in self.snapshots():
            meta = read_meta(path)
            if meta is None:
                log.warning("%s: its %s cannot be read; trying an older snapshot", path, META)
                continue
            theirs = meta.get("identity", {})
            differs = [key for key in self.identity if theirs.get(key) != self.identity[key]]
            if differs:
                raise NegspaceError(
                    f"{arg('state_dir')} {self.folder} holds the state of another detector or model "
                    f"({', '.join(differs)} differ); choose another folder, or remove it to start "
                    "from the saved detector."
                )
            return path, meta
        return None

    def write(self, detector: Any, counters: dict[str, Any]) -> Path:
        """Save ``detector`` (its live state) as the newest snapshot, atomically; prune older ones."""
        newest = self.snapshots()
        seq = int(newest[0].name[len(PREFIX) :]) + 1 if newest else 1
        tmp = self.folder / f"{TMP_PREFIX}{seq:08d}-{os.getpid()}"
        final = self.folder / f"{PREFIX}{seq:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        detector.save(tmp)
        meta = {"format": FORMAT, "seq": seq, "time": time.time(), "identity": self.identity, **counters}
        (tmp / META).write_text(to_json(meta, indent=1), encoding="utf-8")
        _sync_tree(tmp)
        tmp.rename(final)
        _sync_dir(self.folder)
        self._prune()
        return final


def read_meta(path: Path) -> dict[str, Any] | None:
    """A snapshot's record (``None`` when it cannot be read)."""
    try:
        meta = json.loads((Path(path) / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _sync_tree(folder: Path) -> None:
    """Every file under ``folder``, and the folders, on disk before the rename publishes them."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _sync_dir(path)
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
