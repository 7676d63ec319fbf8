"""What ``negspace serve`` is told: a frozen :class:`ServeConfig`, checked before any model loads.

No heavy import here: the command line builds and checks the config in milliseconds, and a
refused option never costs a model load.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

from negspace.errors import NegspaceError, arg
from negspace.reprs import with_config_repr

ADAPT_MODES = ("auto", "sync", "async")
ENGINES = ("local", "ray")
LOOPBACK_NAMES = ("localhost",)
ENGINE_RAY = arg("engine=" + repr("ray"), "--engine ray")  # how the caller chose Ray Serve


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@with_config_repr
@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches, limits requests and keeps an adaptive state.

    ``detector`` is a folder saved by ``negspace eval --save-detector`` (or ``det.save``); the
    threshold is ``threshold``, the one keeping 95% of the ``threshold_id`` images, or the one
    saved with the detector. ``adapt`` (``None``: the detector scores frozen) lets a test-time
    detector learn from the traffic: ``"sync"`` (each request waits for its batch's update, as
    ``eval``'s stream), ``"async"`` (scored with the state in effect, the update runs beside the
    traffic) or ``"auto"`` (async where an update asks an MLLM or runs an inversion: ANTS,
    InterNeg, TINS; sync otherwise). ``state_dir`` keeps snapshots of that state every
    ``snapshot_every`` images and at shutdown; a restart resumes from the newest.

    ``engine`` ``"ray"`` serves ``replicas`` copies of the app on Ray Serve (each loads its own
    model, with ``replica_cpus`` and ``replica_gpus`` reserved), on the cluster at ``ray_address``
    (waiting at most ``ray_timeout`` seconds for it) or a local Ray; ``"local"`` is one uvicorn
    process. An adaptive detector has one state with one writer: it is served by one replica.
    """

    detector: Path | None = None
    threshold: float | None = None
    threshold_id: str | None = None
    threshold_source: str | None = None  # where a given threshold came from, when not the user (/v1/detector)
    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None
    no_auth: bool = False
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024  # images waiting for the model; more are answered 503 with Retry-After
    max_images: int = 64  # images (or feature rows) per request
    max_body_mb: float = 32.0
    max_pixels: int = 40_000_000  # width x height of one image, checked before it is decoded
    decode_workers: int = 4  # threads decoding images beside the model
    adapt: str | None = None
    state_dir: Path | None = None
    snapshot_every: int = 1000
    scoring_backend: str = "numpy"
    engine: str = "local"
    replicas: int = 1
    ray_address: str | None = None
    ray_timeout: float = 30.0
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def check(self) -> None:
        """Refuse, in one sentence, what cannot work, before any model loads."""
        if self.detector is None:
            raise NegspaceError(
                f"Give {arg('detector')} DIR: a detector saved by `negspace eval --save-detector` or det.save(DIR)."
            )
        if not Path(self.detector).is_dir():
            raise NegspaceError(f"{arg('detector')} {self.detector} is not a folder.")
        self.check_settings()

    def check_settings(self) -> None:
        """Everything but the detector folder (what :func:`~negspace.serve.app.create_app`, given a
        detector object, checks)."""
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise NegspaceError(f"{arg('threshold')} must be a finite number, got {self.threshold}.")
        if self.threshold is not None and self.threshold_id is not None:
            raise NegspaceError(f"Give {arg('threshold')} or {arg('threshold_id')}, not both.")
        if not 0 <= self.port <= 65535:
            raise NegspaceError(f"{arg('port')} must be between 0 and 65535, got {self.port}.")
        for name, value in (
            ("max_batch", self.max_batch),
            ("max_queue", self.max_queue),
            ("max_images", self.max_images),
            ("max_pixels", self.max_pixels),
            ("decode_workers", self.decode_workers),
            ("snapshot_every", self.snapshot_every),
        ):
            if value < 1:
                raise NegspaceError(f"{arg(name)} must be a positive integer, got {value}.")
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            raise NegspaceError(f"{arg('max_wait_ms')} must be a number >= 0, got {self.max_wait_ms}.")
        if not (self.max_body_mb > 0 and math.isfinite(self.max_body_mb)):
            raise NegspaceError(f"{arg('max_body_mb')} must be a positive number, got {self.max_body_mb}.")
        if self.max_images > self.max_queue:
            raise NegspaceError(
                f"{arg('max_images')} {self.max_images} is larger than {arg('max_queue')} "
                f"{self.max_queue}: a request that large could never be queued."
            )
        if self.adapt is not None and self.adapt not in ADAPT_MODES:
            raise NegspaceError(f"{arg('adapt')} must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}.")
        if self.state_dir is not None and self.adapt is None:
            raise NegspaceError(f"{arg('state_dir')} keeps the state of an adaptive detector: add {arg('adapt')}.")
        if self.state_dir is not None and Path(self.state_dir).exists() and not Path(self.state_dir).is_dir():
            raise NegspaceError(f"{arg('state_dir')} {self.state_dir} is a file, not a folder.")
        self.check_engine()
        if self.token_file is not None and self.no_auth:
            raise NegspaceError(f"Give {arg('token_file')} or {arg('no_auth')}, not both.")
        if not is_loopback(self.host) and self.token_file is None and not self.no_auth:
            raise NegspaceError(
                f"{arg('host')} {self.host} lets other machines reach the server: give "
                f"{arg('token_file')} FILE (clients send its token as 'Authorization: Bearer ...') "
                f"or, on a network you trust, {arg('no_auth')}."
            )
        if self.token_file is not None:
            read_token(self.token_file)

    def check_engine(self) -> None:
        """Where the app runs: one process, or replicas on Ray Serve (one writer for an adaptive state)."""
        if self.engine not in ENGINES:
            raise NegspaceError(f"{arg('engine')} must be one of {', '.join(ENGINES)}, got {self.engine!r}.")
        if self.replicas < 1:
            raise NegspaceError(f"{arg('replicas')} must be a positive integer, got {self.replicas}.")
        if self.adapt is not None and self.replicas > 1:
            raise NegspaceError(
                f"{arg('adapt')} with {arg('replicas')} {self.replicas} is refused: an adaptive state has one "
                f"writer, and {self.replicas} replicas would each learn from their own share of the traffic; "
                f"serve an adaptive detector with one replica, or serve it frozen (without {arg('adapt')})."
            )
        if self.engine == "ray":
            if self.port == 0:
                raise NegspaceError(f"{arg('port')} 0 (any free port) cannot be used with {ENGINE_RAY}: give a port.")
            for name, value in (("replica_cpus", self.replica_cpus), ("replica_gpus", self.replica_gpus)):
                if not (value >= 0 and math.isfinite(value)):
                    raise NegspaceError(f"{arg(name)} must be a number >= 0, got {value}.")
            if not (self.ray_timeout > 0 and math.isfinite(self.ray_timeout)):
                raise NegspaceError(f"{arg('ray_timeout')} must be a positive number, got {self.ray_timeout}.")
            return
        if self.replicas > 1:
            raise NegspaceError(
                f"{arg('replicas')} {self.replicas} needs {ENGINE_RAY}: one local process serves one replica."
            )
        defaults = ServeConfig()
        for name in ("ray_address", "ray_timeout", "replica_cpus", "replica_gpus"):
            if getattr(self, name) != getattr(defaults, name):
                raise NegspaceError(f"{arg(name)} applies to replicas on Ray Serve: add {ENGINE_RAY}.")

    def token(self) -> str | None:
        """The bearer token clients must send (``None``: no token asked)."""
        return read_token(self.token_file) if self.token_file is not None else None


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); the file is named, never the token."""
    option = arg("token_file")
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise NegspaceError(f"{option} {path} cannot be read ({reason}).") from None
    if len(token) < 16:
        raise NegspaceError(
            f"{option} {path} holds {'no' if not token else 'a too short'} token: write at least 16 "
            "random characters into it (e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe())'`)."
        )
    return token
