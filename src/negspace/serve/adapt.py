"""Who scores a batch, and how an adaptive detector learns from the traffic (one writer).

- :class:`StaticScorer`: a static or frozen detector, a pure function of each image.
- :class:`SyncScorer`: each batch is scored and learned from by the live detector, exactly as a
  stream in ``negspace eval`` (``OnlineDetector.score_stream``) would on the same batches; the
  batch's requests wait for the update.
- :class:`AsyncScorer`: each batch is scored by a frozen copy of the state in effect; the update
  is queued to one writer thread, which applies the batches in arrival order on the live detector
  and then publishes a new frozen copy, swapped in between two batches (a reference assignment).
  No request waits for an MLLM or an inversion; a batch is scored with the state left by the
  batches the writer has finished, not necessarily by all earlier ones (docs/serving.md measures
  what that changes).

Every adaptive scorer counts what it learned and what failed, snapshots its live state every
``snapshot_every`` images (and on demand, and when it closes) and can be reset to the saved
detector's state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negspace.serve.encode import RequestError, model_thread, model_threads
from negspace.serve.state import SnapshotStore, frozen_copy, state_counters

log = logging.getLogger("negspace")

PUBLISH_EVERY = 8  # async: a writer that falls behind publishes a copy at least every this many updates


@dataclass
class Scored:
    """One batch's scores, each image's nearest ID class (index) and nearest negative text with
    their cosines (NaN where a label has no feature at hand), and the ANTS explanations asked for
    (row -> texts), all from the detector object that scored the batch."""

    scores: np.ndarray
    nearest_id: np.ndarray
    negatives: list[str]
    id_cosines: np.ndarray
    negative_cosines: np.ndarray
    explanations: dict[int, Any]


def scored_rows(
    detector: Any,
    features: np.ndarray,
    scores: Any,
    nearest_id: Any,
    negatives: Any,
    explain: dict[int, int] | None,
    table: dict[str, np.ndarray] | None = None,
) -> Scored:
    """What a batch's rows say beside their scores, read off ``detector`` as it scored them:
    the cosine to the nearest ID class's text, to the nearest negative's (looked up in
    ``table``, text -> feature, default the detector's negative bank) and ANTS's explanations of
    the rows in ``explain`` (row -> how many texts)."""
    nearest_id = np.asarray(nearest_id, dtype=np.int64)
    negatives = list(negatives)
    id_cos = np.einsum("ij,ij->i", features, np.asarray(detector.id_text_features, np.float32)[nearest_id])
    table = negative_features(detector) if table is None else table
    neg_cos = np.full(len(features), np.nan)
    for k, text in enumerate(negatives):
        row = table.get(text)
        if row is not None:
            neg_cos[k] = float(features[k] @ row)
    explanations: dict[int, Any] = {}
    if explain and hasattr(detector, "explain"):
        rows = sorted(explain)
        found = detector.explain(features[rows], top=max(explain.values()))
        explanations = {k: texts[: explain[k]] for k, texts in zip(rows, found, strict=True)}
    return Scored(
        np.asarray(scores, np.float64), nearest_id, negatives, id_cos.astype(np.float64), neg_cos, explanations
    )


def negative_features(detector: Any) -> dict[str, np.ndarray]:
    """Text -> feature of the labels an image's nearest negative is named from (the negative
    bank; for TANL its whole pool, of which the bank is the labels active now)."""
    source = _negative_source(detector)
    return _table(*source) if source is not None else {}


def _negative_source(detector: Any) -> tuple[Any, Any] | None:
    pool = getattr(detector, "pool_labels", None)
    if pool:
        return detector.pool_text_features, pool
    return detector.negative_bank()


def _table(features: Any, texts: Any) -> dict[str, np.ndarray]:
    table: dict[str, np.ndarray] = {}
    for text, row in zip(texts, np.asarray(features, np.float32), strict=True):
        table.setdefault(text, row)
    return table


class NegativeTables:
    """:func:`negative_features`, remembered while the bank is the same objects (TANL's pool,
    AdaNeg's bank, a learned bank until it grows); a bank made anew at each call (ANTS) is
    looked up anew."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: dict[tuple[int, int, int], tuple[Any, Any, dict[str, np.ndarray]]] = {}

    def __call__(self, detector: Any) -> dict[str, np.ndarray]:
        source = _negative_source(detector)
        if source is None:
            return {}
        features, texts = source
        key = (id(features), id(texts), len(texts))
        hit = self._entries.get(key)
        if hit is not None and hit[0] is features and hit[1] is texts:  # the same objects, not a reused id
            return hit[2]
        table = _table(features, texts)
        self._entries[key] = (features, texts, table)
        while len(self._entries) > self.size:
            self._entries.pop(next(iter(self._entries)))
        return table


class StaticScorer:
    """A detector that does not learn: every batch scored with ``score_with_nearest``."""

    adapts = False
    mode = None
    needs_images = False

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.table = negative_features(detector)  # the bank never changes: made once

    def score(
        self, features: np.ndarray, images: list[Any] | None = None, explain: dict[int, int] | None = None
    ) -> Scored:
        scores, nearest_id, negatives = self.detector.score_with_nearest(features)
        return scored_rows(self.detector, features, scores, nearest_id, negatives, explain, self.table)

    def counters(self) -> dict[str, Any]:
        return {}

    def snapshot(self) -> Path | None:
        raise RequestError(
            409,
            "not_adaptive",
            "this server's detector does not adapt (start it with --adapt); there is no state to snapshot or reset.",
        )

    reset = snapshot

    def close(self) -> None:
        pass


class _Adaptive:
    """What both adaptive modes share: the live detector (one writer), counters, snapshots."""

    adapts = True
    mode = ""

    def __init__(
        self,
        live: Any,
        *,
        needs_images: bool,
        fresh: Callable[[], Any],
        store: SnapshotStore | None,
        snapshot_every: int,
        resumed: dict[str, Any] | None = None,
    ) -> None:
        self.live = live
        self.needs_images = needs_images
        self.fresh = fresh  # the saved detector's state, unfrozen (what a reset returns to)
        self.store = store
        self.snapshot_every = snapshot_every
        self.lock = threading.RLock()  # held while the live state changes or is saved
        resumed = resumed or {}
        self.images_learned = int(resumed.get("images_learned", 0))
        self.updates = int(resumed.get("updates", 0))
        self.failures: dict[str, int] = {}
        self.snapshots_written = 0
        self.snapshot_failures = 0
        self.resets = 0
        self.last_snapshot: dict[str, Any] | None = None
        self._snapshot_at = self.images_learned  # images learned when the last snapshot was taken
        self._state = state_counters(live)
        self.tables = NegativeTables()

    # -- learning ------------------------------------------------------------------------------

    def _learn(
        self,
        features: np.ndarray,
        images: list[Any] | None,
        explain: dict[int, int] | None = None,
        describe: bool = True,
    ) -> Scored | None:
        """The live detector scores and learns from one batch (caller holds the lock); the rows
        described (``describe``) with the state just after the update; ``None`` when the update
        failed (counted, logged)."""
        live = self.live
        try:
            if self.needs_images:  # ANTS sends the batch's negative images to its MLLM
                scores = live.score_features(features, images=images)
                nearest_id, negatives = live.nearest_labels(features)
            else:
                scores, nearest_id, negatives = live.score_with_nearest(features)
        except Exception as err:  # noqa: BLE001 - an inversion or MLLM failure must not stop the server
            kind = type(err).__name__
            self.failures[kind] = self.failures.get(kind, 0) + 1
            log.error(
                "the adaptive detector's update failed on a batch of %d (%s: %s); counted in /metrics",
                len(features),
                kind,
                err,
            )
            return None
        self.images_learned += len(features)
        self.updates += 1
        self._state = state_counters(live)
        # described before a snapshot (saving ANTS applies its pending MLLM answers)
        scored = (
            scored_rows(live, features, scores, nearest_id, negatives, explain, self.tables(live)) if describe else None
        )
        if self.store is not None and self.images_learned - self._snapshot_at >= self.snapshot_every:
            self._write_snapshot()
        return scored

    def _write_snapshot(self) -> Path | None:
        """Snapshot the live state (caller holds the lock); a failure is counted, never fatal."""
        if self.store is None:
            return None
        try:
            path = self.store.write(self.live, self._record())
        except Exception as err:  # noqa: BLE001 - a full disk must not stop the scoring
            self.snapshot_failures += 1
            log.error("snapshot of the adaptive state into %s failed: %s", self.store.folder, err)
            return None
        self.snapshots_written += 1
        self._snapshot_at = self.images_learned
        self.last_snapshot = {"path": path.name, "images_learned": self.images_learned, "time": time.time()}
        return path

    def _record(self) -> dict[str, Any]:
        return {"images_learned": self.images_learned, "updates": self.updates, "mode": self.mode, "state": self._state}

    def _reset_now(self) -> None:
        """Back to the saved detector's state (caller holds the lock); snapshotted at once, so a
        restart does not bring back what the reset forgot."""
        self.live = self.fresh()
        self.images_learned = self.updates = 0
        self.resets += 1
        self._state = state_counters(self.live)
        self._write_snapshot()

    def counters(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "images_learned": self.images_learned,
            "updates": self.updates,
            "update_failures": dict(self.failures),
            "snapshots_written": self.snapshots_written,
            "snapshot_failures": self.snapshot_failures,
            "resets": self.resets,
            "last_snapshot": self.last_snapshot,
            "state": dict(self._state),
        }


class SyncScorer(_Adaptive):
    """Each batch learned from and scored by the live detector, its requests waiting."""

    mode = "sync"

    def score(
        self, features: np.ndarray, images: list[Any] | None = None, explain: dict[int, int] | None = None
    ) -> Scored:
        with self.lock:
            scored = self._learn(features, images, explain)
        if scored is None:
            raise RequestError(
                503,
                "update_failed",
                "the adaptive detector's update failed on this batch (counted "
                "in /metrics and /v1/detector); try again.",
            )
        return scored

    def snapshot(self) -> Path | None:
        self._need_store()
        with self.lock:
            return self._write_snapshot()

    def reset(self) -> None:
        with self.lock:
            self._reset_now()

    def close(self) -> None:
        with self.lock:
            if self.store is not None and self.images_learned != self._snapshot_at:
                self._write_snapshot()

    def _need_store(self) -> None:
        if self.store is None:
            raise RequestError(409, "no_state_dir", "this server keeps no snapshots: start it with --state-dir DIR.")


class AsyncScorer(SyncScorer):
    """Scored by the published frozen copy; learned by one writer thread in arrival order."""

    mode = "async"

    def __init__(self, live: Any, *, max_pending: int = 64, **kwargs: Any) -> None:
        super().__init__(live, **kwargs)
        self.published = frozen_copy(live)
        self.published_version = self.updates
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._waiting = 0  # batches queued or being learned (qsize leaves out the one in hand)
        self._waiting_lock = threading.Lock()  # not self.lock: the writer holds that while it learns
        self._since_publish = 0
        # an inversion runs the text tower: the model's cores
        self._threads = model_threads(getattr(live, "encoder", None))
        self._writer = threading.Thread(target=self._write_loop, name="negspace-state-writer", daemon=True)
        self._writer.start()

    def score(
        self, features: np.ndarray, images: list[Any] | None = None, explain: dict[int, int] | None = None
    ) -> Scored:
        copy = self.published  # swapped by the writer between batches: one reference, read once
        scores, nearest_id, negatives = copy.score_with_nearest(features)
        scored = scored_rows(copy, features, scores, nearest_id, negatives, explain, self.tables(copy))
        # a full queue (the writer far behind) holds the batch worker here: the traffic slows,
        # the request queue fills and new requests get 503, instead of memory growing
        with self._waiting_lock:
            self._waiting += 1
        self._queue.put(("learn", features, images))
        return scored

    def _write_loop(self) -> None:
        model_thread(self._threads)
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] == "learn":
                with self.lock:
                    self._learn(item[1], item[2], describe=False)
                    self._since_publish += 1
                    if self._queue.empty() or self._since_publish >= PUBLISH_EVERY:
                        self._publish()
                with self._waiting_lock:
                    self._waiting -= 1
            else:  # a command run in order with the updates: snapshot or reset
                _, command, done = item
                try:
                    done.set_result(command())
                except Exception as err:  # noqa: BLE001 - handed to the caller
                    done.set_exception(err)

    def _publish(self) -> None:
        self.published = frozen_copy(self.live)
        self.published_version = self.updates
        self._since_publish = 0

    def _in_order(self, command: Callable[[], Any]) -> Any:
        """Run ``command`` on the writer thread after the updates queued before it."""
        done: Future = Future()
        self._queue.put(("command", command, done))
        return done.result()

    def snapshot(self) -> Path | None:
        self._need_store()
        return self._in_order(lambda: self._locked(self._write_snapshot))

    def reset(self) -> None:
        def reset() -> None:
            self._reset_now()
            self._publish()

        self._in_order(lambda: self._locked(reset))

    def _locked(self, command: Callable[[], Any]) -> Any:
        with self.lock:
            return command()

    def counters(self) -> dict[str, Any]:
        return {**super().counters(), "pending_updates": self._waiting, "published_updates": self.published_version}

    def close(self) -> None:
        """Apply every queued update, stop the writer, snapshot."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        super().close()
