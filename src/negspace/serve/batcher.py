"""Dynamic batching: requests' images (or feature rows) queue up; one worker thread, which owns
the model, takes up to ``max_batch`` of them at a time (waiting at most ``max_wait_ms`` after the
first for more), encodes the images, scores the whole batch and hands each request its rows.

The event loop never waits for the model: a request awaits an ``asyncio`` future that the worker
resolves through ``loop.call_soon_threadsafe``. Decoding happens before an image is queued, in
the app's decoding threads, so it runs beside the encoding of earlier batches. A queue holding
``max_queue`` rows refuses more at once (:class:`QueueFull`: the app answers 503 with
``Retry-After``) rather than letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from negspace.serve.encode import RequestError, model_thread, model_threads

log = logging.getLogger("negspace")


class QueueFull(Exception):
    """The queue cannot take a request's rows now."""


@dataclass
class Job:
    """One request: its rows (``pixels`` to encode or ``features`` given), the images an MLLM may
    see, the future it awaits, and the rows done so far."""

    pixels: list[Any] | None
    features: np.ndarray | None
    images: list[Any] | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    explain: int = 0
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    failed: bool = False

    def __len__(self) -> int:
        rows = self.pixels if self.pixels is not None else self.features
        return 0 if rows is None else len(rows)


@dataclass
class BatchOut:
    """What one row of a job got: its score, nearest ID class and negative with their cosines,
    and (ANTS, when asked) its explanation."""

    score: float
    nearest_id: int
    negative: str
    id_cosine: float
    negative_cosine: float | None
    explanation: list[Any] | None = None


class Batcher:
    """The queue and the worker that owns the model (see the module docstring)."""

    def __init__(
        self,
        encoder: Any,
        scorer: Any,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.scorer = scorer
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.on_batch = on_batch  # (rows, encode seconds, score seconds) after each batch: the metrics
        self.threads = model_threads(encoder)  # the model's cores, as where it was made
        self._rows: deque[tuple[Job, int]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._arriving = 0  # requests being read and decoded, whose rows will come
        self._thread: threading.Thread | None = None
        self.alive = False

    @property
    def queued(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="negspace-batcher", daemon=True)
        self.alive = True
        self._thread.start()

    def arrival(self) -> Arrival:
        """Say that a request is on its way (being read and decoded): while one is, the worker
        waits up to ``max_wait`` for its rows; with none on the way, a batch runs at once (one
        request alone never waits for company that is not coming)."""
        with self._ready:
            self._arriving += 1
        return Arrival(self)

    def arrived(self) -> None:
        """One request on its way is no longer (see :meth:`arrival`)."""
        with self._ready:
            self._arriving -= 1
            self._ready.notify()

    async def submit(self, job: Job, arrival: Arrival | None = None) -> list[BatchOut]:
        """Queue ``job``'s rows in arrival order (its ``arrival`` ends as they are queued) and
        wait for them."""
        n = len(job)
        job.results = [None] * n
        job.remaining = n
        with self._ready:
            if arrival is not None and arrival.open:  # counted off with the rows queued: no gap between
                arrival.open = False
                self._arriving -= 1
            if self._closing:
                raise RequestError(
                    503,
                    "shutting_down",
                    "the server is shutting down; retry on another instance.",
                    {"Retry-After": "1"},
                )
            if len(self._rows) + n > self.max_queue:
                raise QueueFull
            self._rows.extend((job, i) for i in range(n))
            self._ready.notify()
        return await job.future

    def close(self) -> None:
        """Refuse new requests, finish every queued row, stop the worker."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()
        self.alive = False

    # -- the worker ----------------------------------------------------------------------------

    def _take(self) -> list[tuple[Job, int]] | None:
        """The next batch: up to ``max_batch`` rows, waiting ``max_wait`` after the first for more
        while requests are on their way."""
        with self._ready:
            while not self._rows:
                if self._closing:
                    return None
                self._ready.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self._rows) < self.max_batch and not self._closing and self._arriving > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            take = min(self.max_batch, len(self._rows))
            return [self._rows.popleft() for _ in range(take)]

    def _run(self) -> None:
        if self.threads:
            model_thread(self.threads)
        while (batch := self._take()) is not None:
            try:
                self._process(batch)
            except Exception as err:
                if not isinstance(err, RequestError):
                    log.exception("a batch of %d failed", len(batch))
                    err = RequestError(
                        503,
                        "batch_failed",
                        f"the model failed on this batch ({type(err).__name__}); try again.",
                        {"Retry-After": "1"},
                    )
                for job in {id(job): job for job, _ in batch}.values():
                    if not job.failed:
                        job.failed = True
                        job.loop.call_soon_threadsafe(_set_exception, job.future, err)
        self.alive = False

    def _process(self, batch: list[tuple[Job, int]]) -> None:
        started = time.perf_counter()
        pixels = {k: job.pixels[i] for k, (job, i) in enumerate(batch) if job.pixels is not None}
        given = {k: job.features[i] for k, (job, i) in enumerate(batch) if job.features is not None}
        encoded = self.encoder.encode_transformed(list(pixels.values())) if pixels else None
        dim = encoded.shape[1] if encoded is not None else len(next(iter(given.values())))
        features = np.empty((len(batch), dim), np.float32)
        if encoded is not None:
            features[list(pixels)] = encoded
        for k, row in given.items():
            features[k] = row
        images = [job.images[i] if job.images is not None else None for job, i in batch]
        explain = {k: job.explain for k, (job, _) in enumerate(batch) if job.explain}
        encoded_at = time.perf_counter()
        scored = self.scorer.score(features, images if any(im is not None for im in images) else None, explain)
        scored_at = time.perf_counter()
        finished = []
        for k, (job, i) in enumerate(batch):
            neg_cos = scored.negative_cosines[k]
            job.results[i] = BatchOut(
                float(scored.scores[k]),
                int(scored.nearest_id[k]),
                scored.negatives[k],
                float(scored.id_cosines[k]),
                None if np.isnan(neg_cos) else float(neg_cos),
                scored.explanations.get(k),
            )
            job.remaining -= 1
            if job.remaining == 0:
                finished.append(job)
        for job in finished:
            job.loop.call_soon_threadsafe(_set_result, job.future, job.results)
        if self.on_batch is not None:
            self.on_batch(len(batch), encoded_at - started, scored_at - encoded_at)


class Arrival:
    """A request on its way to the queue (see :meth:`Batcher.arrival`); :meth:`close` (or
    queueing its rows) ends it, once."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.batcher.arrived()


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the client may have gone away (cancelled)
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
