"""What ``negspace serve`` runs: :func:`build_app` (load, then :func:`~negspace.serve.app.create_app`)
and :func:`serve` (the app under uvicorn)."""

from __future__ import annotations

import logging
from typing import Any

from negspace.errors import NegspaceError, arg
from negspace.runconfig import MLLMConfig, ModelConfig
from negspace.serve.app import create_app
from negspace.serve.config import ServeConfig
from negspace.serve.service import load_service

log = logging.getLogger("negspace")


def build_app(config: ServeConfig, model: ModelConfig | None = None, mllm: MLLMConfig | Any = None) -> Any:
    """The app of ``config``: :func:`load_service`, then :func:`negspace.serve.create_app`."""
    loaded = load_service(config, model, mllm)
    return create_app(
        config,
        loaded.detector,
        loaded.encoder,
        threshold=loaded.threshold,
        threshold_source=loaded.threshold_source,
        info=loaded.info,
        reload=loaded.reload,
    )


def serve(
    config: ServeConfig, model: ModelConfig | None = None, mllm: MLLMConfig | Any = None, log_level: str = "warning"
) -> None:
    """Load, then serve under uvicorn until SIGTERM or SIGINT (which answer the requests in
    flight and snapshot an adaptive state before the process ends). Replicas on Ray Serve
    (``config.engine`` ``"ray"``) are :func:`negspace.serve.ray_serve.serve_replicas`'s."""
    if config.engine != "local":
        raise NegspaceError(
            f"serve() runs one local process; {arg('engine')} {config.engine!r} is served by "
            "negspace.serve.ray_serve.serve_replicas()."
        )
    import uvicorn

    app = build_app(config, model, mllm)
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info(
        "listening on http://%s:%d (the live page at /, the schema at /openapi.json)%s",
        host,
        config.port,
        "" if config.token_file is None else ", bearer token required",
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=None,
    )
