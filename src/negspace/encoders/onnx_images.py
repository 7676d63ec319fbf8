"""Images through ONNX Runtime without torch: the lighter serving process of ``--runtime onnxruntime``.

Serving a saved detector needs the image tower alone (its text features are saved), so a process
that never imports torch nor loads the text tower holds far less memory (ViT-B/16 on 2 cores: a
third of eager torch's; see ``benchmarks/onnx_runtime.py``). :func:`open_image_encoder` finds the
model's entry in the image index (:mod:`negspace.encoders.onnx_index`) from the model spec, the
weights' fingerprint (a file hash: no model is built) and the preprocessing, opens the image
tower with ONNX Runtime (a few images at a time: bounded activations) and checks it on the probe.
Where no usable entry exists, a child process loads the model with torch, exports it and writes
the entry (one process at a time per model: concurrent starts wait for the first), so that even a
first start never imports torch. A model whose transform has no exact recipe is recorded so, and loads with torch.

What the image-only encoder cannot do itself (encode texts) it hands to a full encoder loaded on
first use, so a detector that encodes texts while scoring still works, with torch's memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from negspace.cache import FeatureStore, weights_fingerprint
from negspace.encoders.image_recipe import ImageRecipe
from negspace.encoders.onnx_index import (
    EXPORTS_FOLDER,
    IMAGE_FILE,
    PROBE_TOLERANCE,
    image_index_path,
    probe_input,
    read_image_index,
    relative_distance,
)
from negspace.encoders.results import ImageEncoding, SkippedFile, as_unit_float32, check_batch_size
from negspace.errors import UnreadableImageError

__all__ = [
    "OnnxImageBackend",
    "OnnxImageEncoder",
    "cpu_session",
    "export_in_subprocess",
    "load_image_encoder",
    "onnx_threads",
    "open_image_encoder",
]

logger = logging.getLogger(__name__)

#: How long a child process may take to export (ViT-B/16: about 10 s on 2 cores; ViT-L more).
EXPORT_TIMEOUT_S = 3600.0


def onnx_threads() -> int:
    """ONNX Runtime's intra-op threads: ``OMP_NUM_THREADS`` where set (as torch reads it), else
    0, ONNX Runtime's default of one per physical core (torch's default too)."""
    with contextlib.suppress(ValueError):
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    return 0


def cpu_session(path: Path, threads: int, serving: bool = False) -> Any:
    """An ONNX Runtime session of ``path`` on the CPU with ``threads`` intra-op threads (0: one per
    physical core). ``serving``: no memory pattern planner (:class:`OnnxImageBackend` bounds the
    activations instead), and threads that sleep between batches instead of spinning (spinning
    took 1.2 ms of CPU per request from the server's image decoders with the tiny model; no speed
    lost on ViT-B/16)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    if serving:
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxImageBackend:
    """The image tower's session and transform (the part of :class:`~negspace.encoders.base.Backend`
    that serving uses): ``pixel_transform`` gives ``(3, H, W)`` float32 arrays, ``encode_pixels``
    raw embeddings of a ``(B, 3, H, W)`` batch, run at most ``CHUNK_PIXELS`` input pixels at a
    time (4 images of 224 x 224): ONNX Runtime's arena keeps the largest run's activations for
    good (ViT-B/16: about 12 MB an image, so a batch of 32 would hold 400 MB), and on a CPU the
    images per second do not grow with the batch beyond a few (ViT-B/16, 2 cores: within 5% from
    4 to 16). A small model's images run in one go (each run has a fixed cost)."""

    runtime = "onnxruntime"
    CHUNK_PIXELS = 4 * 224 * 224

    def __init__(self, session: Any, recipe: ImageRecipe, preprocess_id: str, dim: int, folder: Path) -> None:
        self.session = session
        self.recipe = recipe
        self.preprocess_id = preprocess_id
        self.dim = dim
        self.folder = folder

    def __repr__(self) -> str:
        return f"OnnxImageBackend(folder={str(self.folder)!r}, dim={self.dim})"

    def pixel_transform(self) -> ImageRecipe:
        return self.recipe

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        batch = np.asarray(pixels, dtype=np.float32)
        chunk = max(1, self.CHUNK_PIXELS // max(1, batch.shape[-1] * batch.shape[-2]))
        parts = [
            self.session.run(None, {"pixels": np.ascontiguousarray(batch[start : start + chunk])})[0]
            for start in range(0, len(batch), chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


class OnnxImageEncoder:
    """A :class:`~negspace.encoders.base.ClipEncoder` for images, without torch.

    It encodes in-memory images, transformed pixels and image files (not cached: what it encodes
    is a server's traffic and a threshold's ID images) to unit float32 features equal to the torch
    encoder's within float32 rounding. Texts go to a full encoder, loaded on first use.
    """

    runtime = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        backend: OnnxImageBackend,
        *,
        spec: str,
        fingerprint: str,
        store: FeatureStore | None,
        load_full: Callable[[], Any],
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.fingerprint = fingerprint
        self.store = store  # the cache folder it was found in (ClipEncoder's attribute)
        self.dim = backend.dim
        self.preprocess_id = backend.preprocess_id
        self.show_progress = True
        self.workers = 0
        self._load_full = load_full
        self._full: Any = None
        self._full_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OnnxImageEncoder(spec={self.spec!r}, dim={self.dim}, folder={str(self.backend.folder)!r})"

    # -- images -------------------------------------------------------------------------------

    def encode_transformed(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Unit float32 features of transformed images (``pixel_transform``'s outputs)."""
        return as_unit_float32(self.backend.encode_pixels(np.stack(list(pixels))))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Unit float32 features of in-memory images, ``(len(images), D)``."""
        check_batch_size(batch_size)
        transform = self.backend.pixel_transform()
        chunks = [
            self.encode_transformed([transform(im) for im in images[start : start + batch_size]])
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode_image_files(
        self, paths: Sequence[Path | str], batch_size: int = 64, progress: bool | None = None
    ) -> ImageEncoding:
        """Features of the readable files; an unreadable one is skipped, counted and logged."""
        from negspace.data.images import load_rgb

        check_batch_size(batch_size)
        transform = self.backend.pixel_transform()
        kept: list[Path] = []
        skipped: list[SkippedFile] = []
        chunks: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        show = self.show_progress if progress is None else progress
        for path in tqdm([Path(p) for p in paths], desc="images", unit="img", disable=not show):
            try:
                pending.append(transform(load_rgb(path)))
                kept.append(path)
            except (UnreadableImageError, OSError) as err:
                skipped.append(SkippedFile(path, getattr(err, "reason", str(err))))
            if len(pending) == batch_size:
                chunks.append(self.encode_transformed(pending))
                pending = []
        if pending:
            chunks.append(self.encode_transformed(pending))
        if skipped:
            logger.warning("Skipped %d unreadable image file(s), e.g. %s", len(skipped), skipped[0].path)
        features = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        return ImageEncoding(features, kept, skipped)

    # -- texts: the full encoder ----------------------------------------------------------------

    def full_encoder(self) -> Any:
        """The torch-loaded encoder of the same model (loaded once, on first use)."""
        with self._full_lock:
            if self._full is None:
                logger.info("Loading the text tower of %s (with torch) for a text this detector encodes", self.spec)
                self._full = self._load_full()
        return self._full

    def encode_texts(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.full_encoder().encode_texts(*args, **kwargs)

    def encode_texts_averaged(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.full_encoder().encode_texts_averaged(*args, **kwargs)


# ------------------------------------------------------------------------------ finding the export


def _located(
    spec: str, weights: str | Path | None, cache_dir: str | Path | None, preprocess: str
) -> tuple[FeatureStore, str, Path] | None:
    """The cache, the weights' fingerprint and the index entry's path of a model, or ``None``
    where the torch-free path cannot be had (no local weights, no ONNX Runtime)."""
    if weights is None or not Path(weights).expanduser().exists():
        return None  # hub weights need the model built to be named; a missing file: the usual sentence
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    store = FeatureStore.in_dir(cache_dir)
    fingerprint = weights_fingerprint(Path(weights).expanduser(), store)
    return store, fingerprint, image_index_path(store.path.parent, spec, fingerprint, preprocess)


def load_image_encoder(
    spec: str,
    weights: str | Path | None,
    cache_dir: str | Path | None,
    preprocess: str,
    load_full: Callable[[], Any],
) -> OnnxImageEncoder | None:
    """The torch-free image encoder of a model whose checked export is indexed, or ``None``.

    Args:
        spec, weights, cache_dir, preprocess: as :func:`negspace.encoders.load_encoder` takes
            them (local ``weights`` are needed: their hash names the export without building the
            model).
        load_full: loads the full encoder (``runtime="onnxruntime"``) when a text is encoded.

    Returns ``None`` when ``weights`` is not local, ONNX Runtime is not installed, no usable
    entry exists, the model's images need torch, or the export does not give the torch model's
    features of the probe (logged).
    """
    located = _located(spec, weights, cache_dir, preprocess)
    return None if located is None else _indexed(spec, located, load_full)


def _indexed(
    spec: str, located: tuple[FeatureStore, str, Path], load_full: Callable[[], Any]
) -> OnnxImageEncoder | None:
    """:func:`load_image_encoder` of a model already located (its cache, fingerprint, entry path)."""
    store, fingerprint, path = located
    entry = read_image_index(path)
    if entry is None or entry.recipe is None or entry.probe_features is None:
        return None
    folder = store.path.parent / EXPORTS_FOLDER / entry.export
    try:
        session = cpu_session(folder / IMAGE_FILE, onnx_threads(), serving=True)
        got = np.asarray(session.run(None, {"pixels": probe_input(entry.probe_size)})[0])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a damaged file
        logger.warning("The ONNX export %s cannot be opened (%s); it is made again", folder, str(err)[:200])
        return None
    if got.shape != entry.probe_features.shape or not relative_distance(got, entry.probe_features) <= PROBE_TOLERANCE:
        logger.warning("The ONNX export %s no longer gives the model's features; it is made again", folder)
        return None
    backend = OnnxImageBackend(session, entry.recipe, entry.preprocess_id, entry.dim, folder)
    logger.info("ONNX Runtime runs the image tower of %s from %s, without torch", spec, folder)
    return OnnxImageEncoder(backend, spec=spec, fingerprint=fingerprint, store=store, load_full=load_full)


def _needs_torch(path: Path) -> bool:
    """Whether the entry at ``path`` records that this model's images need torch."""
    entry = read_image_index(path)
    return entry is not None and entry.recipe is None


@contextlib.contextmanager
def _export_lock(path: Path) -> Iterator[None]:
    """One export at a time per entry: a second server (or replica) starting beside the first
    waits for its export instead of making its own (``fcntl``; elsewhere, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.with_name(path.name + ".lock").open("a")  # held until the export ends
    except OSError:  # a read-only cache: nothing to write the export into either
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def open_image_encoder(
    spec: str,
    weights: str | Path | None,
    cache_dir: str | Path | None,
    preprocess: str,
    load_full: Callable[[], Any],
) -> OnnxImageEncoder | None:
    """:func:`load_image_encoder`, with the export made in a child process where none usable is
    indexed yet; ``None`` where the torch-free path cannot be had (the caller loads the model
    with torch, whose sentence says what is wrong where something is)."""
    located = _located(spec, weights, cache_dir, preprocess)
    if located is None:
        return None
    encoder = _indexed(spec, located, load_full)
    if encoder is not None or _needs_torch(located[2]):
        return encoder
    if not os.access(located[0].path.parent, os.W_OK):
        return None  # a read-only cache: a child could not write the export either
    with _export_lock(located[2]):
        encoder = _indexed(spec, located, load_full)  # another's export
        if (
            encoder is None
            and not _needs_torch(located[2])
            and export_in_subprocess(spec, weights, cache_dir, preprocess)
        ):
            encoder = _indexed(spec, located, load_full)
    return encoder


_EXPORT_SCRIPT = """
import json, sys
from negspace.encoders import load_encoder
spec, weights, cache_dir, preprocess = json.loads(sys.argv[1])
load_encoder(spec, weights=weights, device="cpu", cache_dir=cache_dir, preprocess=preprocess, runtime="onnxruntime")
"""


def export_in_subprocess(spec: str, weights: str | Path | None, cache_dir: str | Path | None, preprocess: str) -> bool:
    """Export the model's towers and write its image index entry in a child process, so that
    this one never imports torch; whether it succeeded (a failure is logged, and the caller's own
    load then says what is wrong in its sentence)."""
    logger.info("Exporting %s to ONNX in a separate process (once per weights; this one stays without torch)", spec)
    given = json.dumps([spec, *(None if p is None else str(p) for p in (weights, cache_dir)), preprocess])
    try:
        done = subprocess.run(
            [sys.executable, "-c", _EXPORT_SCRIPT, given],
            capture_output=True,
            text=True,
            check=False,
            timeout=EXPORT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        logger.warning("The ONNX export process took over %.0f s; loading the model here", EXPORT_TIMEOUT_S)
        return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        logger.warning("The ONNX export process failed (%s); loading the model here", last[:300])
    return done.returncode == 0
