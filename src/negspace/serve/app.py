"""The HTTP app of ``negspace serve``: routes, request limits, errors as JSON, the OpenAPI schema.

:func:`create_app` turns a config and an already built detector (and encoder) into an ASGI app:
what ``negspace serve`` runs under uvicorn, what a user mounts in a service of their own, and
what a Ray Serve deployment can wrap, one replica per process. Routes (all JSON but ``/``,
``/metrics``):

    POST /v1/score            images as multipart files, or the bytes of one image
    POST /v1/score/features   feature vectors computed elsewhere
    GET  /v1/detector         method, parameters, model, threshold, adaptive state
    POST /v1/state/snapshot   write a snapshot of the adaptive state now
    POST /v1/state/reset      back to the saved detector's state
    GET  /healthz, /readyz    alive; ready to score (the model loaded, the worker running)
    GET  /metrics             Prometheus text format
    GET  /, /v1/stats         the live page and its data
    GET  /openapi.json        the schema

Every refused request is a 4xx JSON ``{"error": {"kind", "message"}}`` naming what is wrong;
a full queue is 503 with ``Retry-After``. Nothing is fetched from a URL a request names.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from negspace.errors import NegspaceError, arg
from negspace.serve.batcher import Arrival, Batcher, Job, QueueFull
from negspace.serve.config import ServeConfig
from negspace.serve.encode import RequestError, decode_image
from negspace.serve.metrics import ServeMetrics
from negspace.serve.page import live_page
from negspace.serve.service import build_scorer, describe

log = logging.getLogger("negspace")

API_VERSION = "v1"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/openapi.json"})  # no data behind them
ROUTES = frozenset(
    {
        "/v1/score",
        "/v1/score/features",
        "/v1/detector",
        "/v1/state/snapshot",
        "/v1/state/reset",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/v1/stats",
        "/openapi.json",
    }
)
MAX_EXPLAIN = 50


# ------------------------------------------------------------------------------ the schema's models


class ErrorBody(BaseModel):
    kind: str = Field(description="what went wrong, a stable word (also the label of negspace_errors in /metrics)")
    message: str = Field(description="one sentence naming what is wrong")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ExplainedText(BaseModel):
    text: str
    source: str = Field(description="ens, vsnl or corpus: the bank the text is in")
    weight: float


class ScoredImage(BaseModel):
    name: str = Field(description="the file name sent (multipart), the name query parameter, or image-N / row-N")
    sha256: str | None = Field(description="SHA-256 of the image's bytes (null for feature rows)")
    score: float = Field(description="higher = more in-distribution")
    ood: bool = Field(description="score below the threshold")
    threshold: float
    id_class: str = Field(description="the nearest ID class")
    id_cosine: float = Field(description="cosine of the image to that class's text feature")
    negative_label: str | None = Field(description="the nearest negative label (null for a method without negatives)")
    negative_cosine: float | None
    explanation: list[ExplainedText] | None = Field(
        None, description="ANTS, with ?explain=K: the K texts that pulled the image toward OOD"
    )


class ScoreResponse(BaseModel):
    results: list[ScoredImage]
    method: str
    model: str | None


class FeaturesRequest(BaseModel):
    features: list[list[float]] = Field(description="one row per image, of the model's dimension (normalised here)")
    names: list[str] | None = Field(None, description="a name per row (default row-0, row-1, ...)")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 415, 422, 503)
}
SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                },
                "description": "one or more image files (any field name; each part a file)",
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}, "description": "the bytes of one image"},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# ------------------------------------------------------------------------------ middleware


class BodyTooLarge(Exception):
    """A request body went past the limit while it was read."""


def _error_json(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status, headers=headers)


class Guard:
    """The outermost layer (pure ASGI, before any body is read): latency and outcome of every
    request into the metrics, the bearer token, and the body-size limit (a declared length over
    it is refused at once, an undeclared one as soon as the bytes read pass it)."""

    def __init__(self, app: Any, *, token: str | None, max_body: int, metrics: ServeMetrics) -> None:
        self.app, self.token, self.max_body, self.metrics = app, token, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        refused = self._refusal(scope, path)
        try:
            if refused is not None:
                await refused(scope, receive, sending)
            else:
                await self.app(scope, self._limited(receive), sending)
        finally:
            code = status["code"]
            outcome = (
                "ok" if code < 400 else "client_error" if code < 500 else "unavailable" if code == 503 else "error"
            )
            self.metrics.request(route, outcome, time.perf_counter() - started)

    def _refusal(self, scope: Scope, path: str) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and path not in OPEN_PATHS:
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            # compared in constant time; the token itself is never logged nor echoed
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                self.metrics.errors.labels("unauthorized").inc()
                what = "no bearer token was sent" if not given else "the bearer token is not this server's"
                return _error_json(
                    401,
                    "unauthorized",
                    f"{what}: send 'Authorization: Bearer TOKEN' with the token of the server's --token-file.",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                self.metrics.errors.labels("bad_length").inc()
                return _error_json(400, "bad_length", f"Content-Length {length!r} is not a number of bytes.")
            if int(length) > self.max_body:
                self.metrics.errors.labels("body_too_large").inc()
                return _error_json(413, "body_too_large", _too_large(int(length), self.max_body))
        return None

    def _limited(self, receive: Receive) -> Receive:
        read = 0

        async def receiving() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_body:
                    raise BodyTooLarge
            return message

        return receiving


def _too_large(size: int | None, limit: int) -> str:
    said = f"of {size:,} bytes " if size is not None else ""
    return f"the request body {said}is larger than this server accepts ({limit:,} bytes, --max-body-mb)."


# ------------------------------------------------------------------------------ the app


def create_app(
    config: ServeConfig,
    detector: Any,
    encoder: Any = None,
    *,
    threshold: float | None = None,
    threshold_source: str | None = None,
    info: dict[str, Any] | None = None,
    scorer: Any = None,
    reload: Any = None,
) -> FastAPI:
    """The ASGI app serving ``detector`` (already loaded; with ``encoder``, images are scored,
    without one only ``/v1/score/features``).

    Args:
        config: limits, batching, the token file, the adaptive mode and the state folder
            (``config.detector`` is only recorded; the detector is the one given).
        detector: a static or frozen detector, or with ``config.adapt`` an online one that learns.
        threshold: the OOD flag's threshold (default ``config.threshold``).
        info: what ``/v1/detector`` says of the detector and model (default: from the objects).
        scorer: how batches are scored (default: from ``config.adapt``; see :mod:`negspace.serve.adapt`).
        reload: ``(folder, learn) -> detector``, how a snapshot (or the saved detector, for a reset)
            is loaded; default: :func:`negspace.methods.load_detector` with ``encoder``.

    Raises:
        NegspaceError: a threshold missing, an adaptive mode for a detector that does not learn,
            a state folder of another detector.
    """
    config.check_settings()
    threshold = threshold if threshold is not None else config.threshold
    if threshold is None:
        raise NegspaceError(f"No threshold for the OOD flag: give {arg('threshold')}.")
    threshold = float(threshold)
    threshold_source = threshold_source or "given"
    dim = int(detector.id_text_features.shape[1])
    if encoder is not None and encoder.dim != dim:
        raise NegspaceError(
            f"The detector scores {dim}-dimensional features, but the encoder {encoder.spec} gives "
            f"{encoder.dim}: give the detector's model."
        )
    info = dict(info) if info is not None else describe(detector, encoder)
    token = config.token()
    if scorer is None:  # last: an adaptive scorer starts its writer and locks its state folder
        scorer = build_scorer(config, detector, encoder, identity=info, reload=reload)
    class_names = list(detector.class_names or [])
    metrics = ServeMetrics(config.max_batch, scorer.counters)
    batcher = Batcher(
        encoder,
        scorer,
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        on_batch=metrics.batch,
    )
    metrics.queued = lambda: batcher.queued
    metrics.queue.set_function(lambda: batcher.queued)
    # No torch.set_num_threads(1) in the decoding threads: in torch's OpenMP build it is not
    # per thread in effect, and a decoder started after the model's thread left the model on one
    # core (ViT-B/16 served 1.3x slower than encoded alone, one core idle).
    decoders = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="negspace-decode")
    transform = encoder.backend.pixel_transform() if encoder is not None else None
    needs_images = bool(getattr(scorer, "needs_images", False))
    method = str(info.get("method", type(detector).__name__))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        batcher.start()
        log.info(
            "serving %s: threshold %.6g (%s), batches of up to %d, %s",
            method,
            threshold,
            threshold_source,
            config.max_batch,
            f"adapting ({scorer.mode})" if scorer.adapts else "frozen",
        )
        try:
            yield
        finally:
            await run_in_threadpool(_shutdown)

    def _shutdown() -> None:
        """Answer what is queued, let the writer finish, snapshot (SIGTERM and SIGINT come here)."""
        batcher.close()
        scorer.close()
        decoders.shutdown(wait=True)
        log.info("stopped: %d images scored", metrics.totals["scored"])

    app = FastAPI(
        title="negspace serve",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Zero-shot OOD detection of images (negspace). Scores are higher for in-distribution "
        "images; `ood` is `score < threshold`. Errors are "
        '`{"error": {"kind", "message"}}`.',
    )
    app.state.negspace = {"config": config, "scorer": scorer, "batcher": batcher, "metrics": metrics, "info": info}

    # -- errors as JSON ----------------------------------------------------------------------------

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        metrics.errors.labels(err.kind).inc()
        return _error_json(err.status, err.kind, err.message, err.headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, __: BodyTooLarge) -> JSONResponse:
        metrics.errors.labels("body_too_large").inc()
        return _error_json(413, "body_too_large", _too_large(None, config.max_body_bytes))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            kind = "not_found"
            message = f"no route {request.url.path}; the API is under /{API_VERSION} (see /openapi.json)."
        elif err.status_code == 405:
            kind, message = "method_not_allowed", f"{request.url.path} does not take {request.method}."
        else:
            kind = "bad_request"
            message = str(err.detail)
            if message.startswith(("Too many files", "Too many fields")):
                err.status_code, kind = 413, "too_many_images"
                message = f"too many parts: at most {config.max_images} images per request (--max-images)."
            elif err.status_code == 400:
                kind, message = "malformed_multipart", f"the multipart body cannot be read: {message}"
        metrics.errors.labels(kind).inc()
        return _error_json(err.status_code, kind, message, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        metrics.errors.labels("invalid_request").inc()
        if first.get("type") == "json_invalid":
            said = first.get("ctx", {}).get("error", "malformed")
            return _error_json(422, "invalid_request", f"the body is not valid JSON ({said}).")
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "the body"
        return _error_json(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}.")

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:  # a bug: said, counted, never a crash
        log.error("internal error", exc_info=err)
        metrics.errors.labels("internal").inc()
        return _error_json(500, "internal", f"internal error ({type(err).__name__}); the server keeps running.")

    # -- scoring -----------------------------------------------------------------------------------

    async def run(
        job_rows: dict[str, Any], names: list[str], hashes: list[str | None], explain: int, arrival: Arrival
    ) -> ScoreResponse:
        loop = asyncio.get_running_loop()
        job = Job(future=loop.create_future(), loop=loop, explain=explain, **job_rows)
        try:
            outs = await batcher.submit(job, arrival)
        except QueueFull:
            raise RequestError(
                503,
                "queue_full",
                f"the queue is full ({config.max_queue} images waiting, --max-queue); retry after a second.",
                {"Retry-After": "1"},
            ) from None
        flags = [out.score < threshold for out in outs]
        metrics.scored(flags)
        results = []
        for name, digest, out, flag in zip(names, hashes, outs, flags, strict=True):
            results.append(
                ScoredImage(
                    name=name,
                    sha256=digest,
                    score=out.score,
                    ood=flag,
                    threshold=threshold,
                    id_class=class_names[out.nearest_id] if out.nearest_id < len(class_names) else str(out.nearest_id),
                    id_cosine=out.id_cosine,
                    negative_label=out.negative or None,
                    negative_cosine=out.negative_cosine,
                    explanation=[ExplainedText(text=t, source=s, weight=w) for t, s, w in out.explanation]
                    if out.explanation is not None
                    else None,
                )
            )
        return ScoreResponse(results=results, method=method, model=info.get("model"))

    def check_explain(explain: int) -> int:
        if explain and not hasattr(detector, "explain"):
            raise RequestError(422, "explain_unsupported", f"explain is for ANTS; this server's detector is {method}.")
        return explain

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=ERRORS,
        openapi_extra=SCORE_BODY,
        summary="Score images (multipart files, or the bytes of one image)",
    )
    async def score(
        request: Request,
        explain: int = Query(0, ge=0, le=MAX_EXPLAIN, description="ANTS: explain each image by K texts"),
        name: str | None = Query(None, max_length=300, description="the image's name (raw bytes)"),
    ) -> ScoreResponse:
        check_explain(explain)
        if encoder is None:
            raise RequestError(
                409, "no_encoder", "this server has no image encoder; send features to /v1/score/features."
            )
        arrival = batcher.arrival()  # the batch worker waits for this request's rows, not longer
        try:
            items = await _images_of(request, name)
            loop = asyncio.get_running_loop()
            decoded = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        decoders, decode_image, data, image_name, transform, config.max_pixels, needs_images
                    )
                    for image_name, data in items
                )
            )
            rows = {
                "pixels": [d.pixels for d in decoded],
                "features": None,
                "images": [d.image for d in decoded] if needs_images else None,
            }
            return await run(rows, [d.name for d in decoded], [d.sha256 for d in decoded], explain, arrival)
        finally:
            arrival.close()

    async def _images_of(request: Request, name: str | None) -> list[tuple[str, bytes]]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await request.form(max_files=config.max_images, max_fields=config.max_images)
            items: list[tuple[str, bytes]] = []
            try:
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        hint = " (nothing is fetched from a URL)" if "://" in value else ""
                        raise RequestError(
                            422,
                            "not_a_file",
                            f"form field {key!r} is text, not a file{hint}: send each image's bytes as a file part.",
                        )
                    items.append((value.filename or f"image-{len(items)}", await value.read()))
            finally:
                await form.close()
            if not items:
                raise RequestError(
                    422,
                    "no_image",
                    "the multipart body holds no file: send images as file parts (e.g. curl -F images=@photo.jpg).",
                )
            return items
        if kind.startswith("image/") or kind == "application/octet-stream":
            return [(name or "image-0", await request.body())]
        said = f"Content-Type {kind!r}" if kind else "no Content-Type"
        raise RequestError(
            415,
            "unsupported_media_type",
            f"{said}: POST /v1/score takes multipart/form-data (image "
            "files) or the bytes of one image (image/*); feature vectors "
            "go to /v1/score/features as JSON.",
        )

    @app.post(
        "/v1/score/features",
        response_model=ScoreResponse,
        responses=ERRORS,
        summary="Score feature vectors computed elsewhere (the model's dimension)",
    )
    async def score_features(
        body: FeaturesRequest, explain: int = Query(0, ge=0, le=MAX_EXPLAIN, description="ANTS: explain by K texts")
    ) -> ScoreResponse:
        check_explain(explain)
        arrival = batcher.arrival()
        try:
            features = _checked_features(body, dim, config.max_images)
            names = body.names or [f"row-{i}" for i in range(len(features))]
            rows = {"pixels": None, "features": features, "images": None}
            return await run(rows, names, [None] * len(names), explain, arrival)
        finally:
            arrival.close()

    # -- the detector and its state ----------------------------------------------------------------

    @app.get("/v1/detector", summary="The detector, its model, threshold and adaptive state")
    async def detector_info() -> dict[str, Any]:
        return {
            **info,
            "threshold": threshold,
            "threshold_source": threshold_source,
            "adapts": scorer.adapts,
            "adapt_mode": scorer.mode,
            "state": scorer.counters(),
            "api_version": API_VERSION,
            "limits": {
                "max_images": config.max_images,
                "max_body_bytes": config.max_body_bytes,
                "max_pixels": config.max_pixels,
                "max_queue": config.max_queue,
            },
            "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms},
        }

    @app.post("/v1/state/snapshot", responses=ERRORS, summary="Write a snapshot of the adaptive state now")
    async def snapshot() -> dict[str, Any]:
        path = await run_in_threadpool(scorer.snapshot)
        return {"snapshot": Path(path).name if path else None, "state": scorer.counters()}

    @app.post("/v1/state/reset", responses=ERRORS, summary="Forget what was learned: back to the saved detector")
    async def reset() -> dict[str, Any]:
        await run_in_threadpool(scorer.reset)
        return {"reset": True, "state": scorer.counters()}

    # -- health, metrics, the live page ------------------------------------------------------------

    @app.get("/healthz", summary="The server answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}}, summary="Ready to score")
    async def readyz() -> Any:
        if not batcher.alive:
            return _error_json(503, "not_ready", "the batch worker is not running (starting or stopping).")
        return {"status": "ready", "encoder": encoder is not None}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        # a replica on Ray Serve gives every replica's samples (negspace.serve.deployment_metrics)
        page = await metrics.deployment.page() if metrics.deployment is not None else generate_latest(metrics.registry)
        return Response(page, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/stats", summary="What the live page draws")
    async def stats() -> dict[str, Any]:
        model = f"with {info['model']}" if info.get("model") else "(features only: no image encoder)"
        return {"detector": f"{method} {model}, threshold {threshold:.6g}", **metrics.summary()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(live_page(method), headers={"Cache-Control": "no-store"})

    app.add_middleware(Guard, token=token, max_body=config.max_body_bytes, metrics=metrics)
    return app


def _checked_features(body: FeaturesRequest, dim: int, max_rows: int) -> np.ndarray:
    """The rows as unit float32, or a refusal naming the first bad row."""
    from negspace.scoring import as_unit_rows

    rows = body.features
    if not rows:
        raise RequestError(422, "no_features", "features is empty: send at least one row.")
    if len(rows) > max_rows:
        raise RequestError(413, "too_many_images", f"{len(rows)} rows: at most {max_rows} per request (--max-images).")
    if body.names is not None and len(body.names) != len(rows):
        raise RequestError(422, "bad_names", f"{len(body.names)} names for {len(rows)} rows.")
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise RequestError(
                422, "wrong_dimension", f"features row {i} has {len(row)} values; this detector's model gives {dim}."
            )
    array = np.asarray(rows, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise RequestError(422, "not_finite", f"features row {int(bad[0])} holds NaN or infinite values.")
    zero = np.flatnonzero(~array.any(axis=1))
    if zero.size:
        raise RequestError(422, "zero_row", f"features row {int(zero[0])} is all zeros (no direction to score).")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return as_unit_rows((array / norms).astype(np.float32), "features", dim)


def _version() -> str:
    from negspace import __version__

    return __version__
