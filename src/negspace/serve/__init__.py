"""``negspace serve``: a detector behind an HTTP API, with dynamic batching and, for test-time
methods, a state that learns from the traffic and survives restarts (docs/serving.md).

    from pathlib import Path
    from negspace.serve import ServeConfig, build_app, create_app
    app = build_app(ServeConfig(detector=Path("det/")))     # load as `negspace serve` does
    app = create_app(ServeConfig(threshold=0.5), detector, encoder)   # objects built in Python

Needs the ``serve`` extra (``pip install 'negspace[serve]'``: FastAPI, uvicorn, prometheus-client,
python-multipart, httpx). The names are imported on first use, so ``import negspace.serve``
costs nothing until one is reached.
"""

from __future__ import annotations

_LAZY = {
    "ServeConfig": "negspace.serve.config",
    "create_app": "negspace.serve.app",
    "build_app": "negspace.serve.server",
    "serve": "negspace.serve.server",
    "load_service": "negspace.serve.service",
    "Client": "negspace.serve.client",
}

__all__ = ["Client", "ServeConfig", "build_app", "create_app", "load_service", "serve"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'negspace.serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
