"""The Ray Data engine of `negspace embed` and `negspace score` (``pip install negspace[ray]``).

One pipeline per run: the paths still to do become a Ray dataset; stateless tasks read each
file, hash its bytes and decode and transform it (the model's own transform, pickled without the
model); an actor pool holds the model (and the frozen detector) once per actor, on a GPU where
the cluster has one, and turns pixel batches into features, scores and labels; the rows stream
back to the driver, which writes them as Parquet parts exactly as the local engine does (so a
re-run resumes, and both engines' outputs read the same). The detector must be frozen: a
detector that learns from the stream would learn from whichever batches each actor happens to
see.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negspace.errors import NegspaceError, arg

log = logging.getLogger(__name__)

RAY = arg("engine=" + repr("ray"), "--engine ray")  # how the caller chose this engine


@dataclass(frozen=True)
class ModelRecipe:
    """How an actor loads the encoder itself (a recipe pickles; a model is not shipped)."""

    spec: str
    weights: str | None
    device: str
    preprocess: str
    runtime: str = "torch"

    def load(self) -> Any:
        from negspace.encoders import load_encoder

        # use_cache=False: an onnxruntime actor exports the towers into a temporary folder of its own
        return load_encoder(
            self.spec,
            weights=self.weights,
            device=self.device,
            use_cache=False,
            preprocess=self.preprocess,
            runtime=self.runtime,
        )


def check_ray_address(address: str | None, timeout: float) -> None:
    """Fail in at most ``timeout`` seconds, naming ``address``, when Ray Data is missing or no
    cluster answers there (Ray itself would retry the connection for minutes)."""
    try:
        import ray  # noqa: F401 - only whether Ray is installed
    except ImportError:
        raise NegspaceError(f"{RAY} needs Ray Data: pip install 'negspace[ray]'.") from None
    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = hostport.rpartition(":")
    if not sep:
        host, port_text = hostport, "6379"  # Ray's default GCS port
    try:
        port = int(port_text)
    except ValueError:
        raise NegspaceError(f"{arg('ray_address')} {address} is not HOST:PORT.") from None
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise NegspaceError(
            f"{arg('ray_address')} {address}: no Ray cluster answers there within {timeout:g} s "
            f"({reason}); start one (`ray start --head`) or fix the address ({arg('ray_timeout')} "
            "sets the wait)."
        ) from None


def start_ray(address: str | None) -> Any:
    """Connect to ``address`` (an existing cluster), or start a local Ray instance."""
    try:
        import ray
    except ImportError:
        raise NegspaceError(f"{RAY} needs Ray Data: pip install 'negspace[ray]'.") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    return ray


def decode_batch(batch: dict[str, np.ndarray], transform: Callable[[Any], Any]) -> dict[str, np.ndarray]:
    """A Ray task: read, hash, decode and transform each file of a batch (failures kept as rows)."""
    from negspace.data import load_rgb
    from negspace.errors import UnreadableImageError

    pixels, hashes, reasons = [], [], []
    for path in batch["path"]:
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            tensor = np.asarray(transform(load_rgb(Path(path))), dtype=np.float32)
        except (OSError, UnreadableImageError) as err:
            digest, tensor = "", None
            reasons.append(getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err))
        else:
            reasons.append("")
        hashes.append(digest)
        pixels.append(tensor)
    shape = next((p.shape for p in pixels if p is not None), (3, 1, 1))
    stacked = np.stack([p if p is not None else np.zeros(shape, np.float32) for p in pixels])
    return {
        "path": batch["path"],
        "sha256": np.array(hashes, dtype=object),
        "pixels": stacked,
        "reason": np.array(reasons, dtype=object),
    }


class EncodeActor:
    """Holds the model (and a frozen detector) for the life of the actor."""

    def __init__(self, recipe: ModelRecipe, detector_dir: str | None, threshold: float | None) -> None:
        import torch

        from negspace.methods import load_detector

        self.torch = torch
        self.encoder = recipe.load()
        self.detector = load_detector(detector_dir) if detector_dir else None
        self.threshold = threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from negspace.encoders.base import unit_features

        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        features = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            with self.torch.inference_mode():
                features[ok] = unit_features(
                    self.encoder.backend.encode_pixels(self.torch.from_numpy(batch["pixels"][ok]))
                )
        out = {"path": batch["path"], "sha256": batch["sha256"], "reason": batch["reason"]}
        if self.detector is None:
            out["feature"] = features
            return out
        scores = np.full(len(ok), np.nan)
        nearest_id, negatives = np.zeros(len(ok), np.int64), [""] * len(ok)
        if ok.any():
            scores[ok], ids, texts = self.detector.score_with_nearest(features[ok])  # one product
            nearest_id[ok] = ids
            for k, text in zip(np.flatnonzero(ok), texts, strict=True):
                negatives[k] = text
        names = self.detector.class_names or []
        out.update(
            score=scores,
            ood=scores < self.threshold,
            id_class=np.array([names[i] if i < len(names) else str(i) for i in nearest_id], dtype=object),
            top_negative=np.array(negatives, dtype=object),
        )
        return out


def run_pipeline(
    paths: list[Path],
    recipe: ModelRecipe,
    transform: Callable[[Any], Any],
    *,
    batch_size: int,
    chunk_size: int,
    detector_dir: str | None = None,
    threshold: float | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    address: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of the Ray pipeline, ``chunk_size`` at a time, in no particular order."""
    ray = start_ray(address)
    dataset = ray.data.from_items([{"path": str(p)} for p in paths])
    dataset = dataset.map_batches(
        decode_batch, batch_size=batch_size, batch_format="numpy", fn_kwargs={"transform": transform}
    )
    dataset = dataset.map_batches(
        EncodeActor,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor,
        fn_constructor_kwargs={"recipe": recipe, "detector_dir": detector_dir, "threshold": threshold},
    )
    yield from dataset.iter_batches(batch_size=chunk_size, batch_format="numpy")


def cluster_gpus() -> int:
    """GPUs the connected cluster has (0 on a CPU cluster)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
