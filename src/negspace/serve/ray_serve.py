"""Replicas of the serving app on Ray Serve: ``negspace serve --engine ray --replicas N``
(``pip install 'negspace[ray]'``).

Each replica is a Ray actor that builds the very app of ``negspace serve``
(:func:`~negspace.serve.server.build_app`: its own model, batcher, limits, token and metrics) and
answers behind Ray Serve's HTTP proxy, which listens on the config's host and port and spreads
the requests over the replicas. Every answer names the replica that gave it in the
``X-Negspace-Replica`` header, and ``/metrics`` gives every replica's samples, labelled
(:mod:`negspace.serve.deployment_metrics`). Only static and frozen detectors run on several replicas: an
adaptive state has one writer (:meth:`~negspace.serve.config.ServeConfig.check_engine` refuses
more than one replica with ``adapt``).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from negspace.errors import NegspaceError, arg
from negspace.runconfig import MLLMConfig, ModelConfig
from negspace.serve.config import ENGINE_RAY, ServeConfig
from negspace.serve.deployment_metrics import ReplicaMetrics, find_hub, start_hub, stop_hub

log = logging.getLogger("negspace")

APP_NAME = "negspace"
DEPLOYMENT_NAME = "negspace-detector"
REPLICA_HEADER = "X-Negspace-Replica"
MIN_RAY = (2, 47)  # serve.ingress builds the app on each replica from a function


class ReplicaHeader:
    """ASGI middleware: every HTTP answer carries ``X-Negspace-Replica: NAME``."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode("latin-1"), replica.encode("latin-1"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def replica_app(
    config: ServeConfig, model: ModelConfig | None, mllm: MLLMConfig | Any, replica: str, hub: Any = None
) -> Any:
    """The app one replica serves: :func:`~negspace.serve.server.build_app`, its answers named;
    with the deployment's metrics ``hub``, its ``/metrics`` gives every replica's samples."""
    from negspace.serve.server import build_app

    app = build_app(config, model, mllm)
    app.add_middleware(ReplicaHeader, replica=replica)
    if hub is None:
        log.warning("replica %s found no metrics hub: its /metrics shows itself alone", replica)
    else:
        metrics = app.state.negspace["metrics"]
        metrics.deployment = ReplicaMetrics(
            hub, replica, metrics.registry, on_failure=metrics.errors.labels("metrics_hub").inc
        )
        metrics.deployment.start()
    return app


def _absolute(config: ServeConfig, model: ModelConfig | None) -> tuple[ServeConfig, ModelConfig | None]:
    """The paths a replica reads, made absolute: a replica's working folder is not the caller's."""

    def resolved(path: Any) -> Any:
        return Path(path).expanduser().resolve() if path is not None else None

    threshold_id = config.threshold_id
    if threshold_id is not None and Path(threshold_id).exists():
        threshold_id = str(resolved(threshold_id))
    config = dataclasses.replace(
        config,
        detector=resolved(config.detector),
        token_file=resolved(config.token_file),
        state_dir=resolved(config.state_dir),
        threshold_id=threshold_id,
    )
    if model is not None:
        weights = (
            model.weights if model.weights is None or not Path(model.weights).exists() else resolved(model.weights)
        )
        model = dataclasses.replace(model, weights=weights, cache_dir=resolved(model.cache_dir), progress=False)
    return config, model


def import_serve() -> Any:
    """``ray.serve``, or one sentence saying how to install it."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise NegspaceError(f"{ENGINE_RAY} needs Ray Serve: pip install 'negspace[ray]'.") from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_RAY:
        raise NegspaceError(
            f"{ENGINE_RAY} needs Ray {MIN_RAY[0]}.{MIN_RAY[1]} or newer, found {ray.__version__}: "
            "pip install -U 'negspace[ray]'."
        )
    return serve


def application(config: ServeConfig, model: ModelConfig | None = None, mllm: MLLMConfig | Any = None) -> Any:
    """The Ray Serve application of ``config``: ``config.replicas`` replicas, each building the app
    itself (nothing but the configs is shipped to them)."""
    serve = import_serve()
    config, model = _absolute(config, model)

    def build() -> Any:  # runs in each replica, when it starts
        from ray import serve

        return replica_app(config, model, mllm, serve.get_replica_context().replica_id.unique_id, find_hub())

    resources = {"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus}
    deployment = serve.deployment(
        serve.ingress(build)(),
        name=DEPLOYMENT_NAME,
        num_replicas=config.replicas,
        ray_actor_options=resources,
        # requests a replica takes at once: its own queue (--max-queue) answers 503 beyond
        max_ongoing_requests=config.max_queue,
    )
    return deployment.bind()


def _threshold_task(config: ServeConfig, model: ModelConfig | None) -> tuple[float, str]:
    """The threshold the app of ``config`` would flag with, and where it came from (a Ray task)."""
    from negspace.serve.service import load_service

    loaded = load_service(config, model)
    return loaded.threshold, loaded.threshold_source


def threshold_once(config: ServeConfig, model: ModelConfig | None) -> ServeConfig:
    """``config`` with ``threshold_id``'s threshold worked out once, in a Ray task, before the
    replicas start: each would otherwise encode the ID images itself (``replicas`` times the
    work), and replicas on machines with other CPUs could flag an image at the margin apart."""
    if config.threshold is not None or config.threshold_id is None or config.replicas < 2:
        return config
    import ray

    task = ray.remote(num_cpus=config.replica_cpus, num_gpus=config.replica_gpus)(_threshold_task)
    try:
        threshold, source = ray.get(task.remote(config, model))
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, NegspaceError):  # a refusal in one sentence (unreadable images, another model)
            raise cause from None
        reason = str(cause or err).strip().splitlines()[-1]
        raise NegspaceError(
            f"{arg('threshold_id')} {config.threshold_id}: the threshold could not be worked out ({reason})."
        ) from None
    log.info("threshold %.6g (%s), worked out once for the %d replicas", threshold, source, config.replicas)
    return dataclasses.replace(config, threshold=threshold, threshold_id=None, threshold_source=source)


def deploy(config: ServeConfig, model: ModelConfig | None = None, mllm: MLLMConfig | Any = None) -> str:
    """Start Ray (``config.ray_address``, or a local Ray), Serve's HTTP proxy on the config's host
    and port, and the replicas; returns once every replica answers, with the URL."""
    from negspace.engines.ray_engine import check_ray_address, start_ray

    config.check_settings()
    serve = import_serve()
    check_ray_address(config.ray_address, config.ray_timeout)
    start_ray(config.ray_address)
    config = threshold_once(*_absolute(config, model))
    serve.start(http_options={"host": config.host, "port": config.port})
    start_hub()  # before the replicas, which look for it as they start
    try:
        serve.run(application(config, model, mllm), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as err:  # a replica that cannot start: its own error, in one sentence
        reason = replica_failure(serve) or str(err).strip() or type(err).__name__
        serve.delete(APP_NAME)  # not left failing on a cluster
        stop_hub()
        raise NegspaceError(
            f"The replicas of {arg('detector')} {config.detector} did not start on Ray Serve: {reason}"
        ) from None
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def replica_failure(serve: Any) -> str | None:
    """The error that stopped a replica, from Serve's status (the last line of its traceback)."""
    try:
        message = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME].message
    except (KeyError, AttributeError):
        return None
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return None
    name, sep, text = lines[-1].partition(": ")
    return text if sep and name.rsplit(".", 1)[-1].endswith(("Error", "Exception")) else lines[-1]


def undeploy(shutdown: bool) -> None:
    """Remove the application (its replicas answer what they hold first); with ``shutdown``,
    stop Serve as well (the Ray this process started)."""
    from ray import serve

    serve.delete(APP_NAME)
    stop_hub()
    if shutdown:
        serve.shutdown()


def serve_replicas(config: ServeConfig, model: ModelConfig | None = None, mllm: MLLMConfig | Any = None) -> None:
    """Deploy, then serve until SIGTERM or SIGINT; then remove the replicas (and, on a local Ray
    this process started, Serve and Ray)."""
    import ray

    local = config.ray_address is None and not ray.is_initialized()
    try:
        url = deploy(config, model, mllm)
    except NegspaceError:
        if local:
            ray.shutdown()
        raise
    log.info(
        "listening on %s: %d replica%s on Ray Serve (%s)%s",
        url,
        config.replicas,
        "" if config.replicas == 1 else "s",
        "a local Ray" if local else f"the cluster at {config.ray_address or 'this process'}",
        "" if config.token_file is None else ", bearer token required",
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
        log.info("stopping the replicas")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        undeploy(shutdown=local)
        if local:
            ray.shutdown()
