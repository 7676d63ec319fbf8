"""Images through ONNX Runtime without torch: the lighter serving process of ``--runtime onnxruntime``.

Serving a saved detector needs the image tower alone (its text features are saved), so a process
that never imports torch or loads the text tower holds far less memory (ViT-B/16 on 2 cores:
see ``benchmarks/onnx_runtime.py``). Each time the ONNX backend
(:mod:`negspace.encoders.onnx_backend`) opens an export with torch loaded, it also writes an
*image index* entry: where the image tower's export lies, the image transform as an
:class:`~negspace.encoders.image_recipe.ImageRecipe` (kept only where it reproduces the torch
transform exactly), the feature width, and the torch model's features of a seeded probe input.
:func:`load_image_encoder` finds that entry from the model spec, the weights' fingerprint (a file
hash: no model is built) and the preprocessing, opens the image tower with ONNX Runtime's
low-memory settings, and checks it on the probe: a missing entry, a damaged file or a probe that
disagrees gives ``None``, and the caller loads the model the usual way.

Where no entry exists yet, :func:`export_in_subprocess` makes the export and the entry in a child
process, so that even a first start never imports torch. What the image-only encoder cannot do
itself (encode texts) it hands to a full encoder loaded on first use, so a detector that encodes
texts while scoring still works, with torch's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from negspace.cache import FeatureStore, make_key, weights_fingerprint
from negspace.encoders.image_recipe import ImageRecipe
from negspace.encoders.results import ImageEncoding, SkippedFile, as_unit_float32
from negspace.errors import UnreadableImageError

__all__ = [
    "OnnxImageEncoder",
    "export_in_subprocess",
    "image_index_path",
    "image_index_written",
    "load_image_encoder",
    "probe_pixels",
    "release_memory",
    "write_image_index",
]

logger = logging.getLogger(__name__)

#: Bumped when the index entry's content changes, so older entries are not read.
INDEX_FORMAT = 1
IMAGE_FILE = "image.onnx"  # onnx_backend's name for the image tower's export
# Relative distance between the saved torch features of the probe and ONNX Runtime's beyond which
# the export is not the model's (float32 rounding: about 1e-6; a damaged graph: order 1).
PROBE_TOLERANCE = 1e-4


def image_index_path(cache_root: Path, spec: str, fingerprint: str, preprocess: str) -> Path:
    """Where the image index entry of a model (spec and weights) and preprocessing lives."""
    key = make_key(kind="onnx-image-index", spec=spec, fingerprint=fingerprint, preprocess=preprocess)
    return cache_root / "onnx-images" / f"{key[:32]}.json"


def probe_pixels(crop: Sequence[int], count: int = 2) -> np.ndarray:
    """A seeded ``(count, 3, H, W)`` float32 input (the same on every machine: NumPy's PCG64)."""
    height, width = crop
    return np.random.default_rng(0).standard_normal((count, 3, height, width)).astype(np.float32)


def write_image_index(
    entry: Path,
    *,
    export: Path,
    recipe: ImageRecipe | None,
    preprocess_id: str,
    dim: int,
    probe_size: tuple[int, int] = (0, 0),
    probe_features: np.ndarray | None = None,
) -> None:
    """Write the index entry ``entry`` atomically (a temporary file renamed into place):
    ``probe_features`` are the torch model's raw features of ``probe_pixels(probe_size)``;
    ``recipe=None`` records that this model's images need torch (no export in a child next time)."""
    data = {
        "format": INDEX_FORMAT,
        "export": export.name,
        "recipe": None if recipe is None else recipe.to_json(),
        "preprocess_id": preprocess_id,
        "dim": int(dim),
        "probe_size": [int(v) for v in probe_size],
        "probe_features": [] if probe_features is None else np.asarray(probe_features, np.float32).tolist(),
    }
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        tmp.replace(entry)
    except OSError as err:  # a read-only cache: the next start loads torch again, nothing worse
        logger.warning("Cannot write the ONNX image index %s (%s)", entry, err)
        tmp.unlink(missing_ok=True)


def release_memory() -> None:
    """Hand dropped weights' memory back to the system: glibc keeps freed heap blocks for reuse
    (about 400 MB of ViT-B/16's 600 MB), ``malloc_trim`` returns them."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def onnx_threads() -> int:
    """ONNX Runtime's intra-op threads: ``OMP_NUM_THREADS`` where set (as torch reads it), else
    0, ONNX Runtime's default of one per physical core (torch's default too)."""
    with contextlib.suppress(ValueError):
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    return 0


def low_memory_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime session of ``path`` on the CPU for a server: it holds the weights once
    (pre-packing, a second re-laid-out copy of every matrix, and the memory pattern planner are
    off: on ViT-B/16 the session's memory halves, its speed within 5%), and its threads sleep
    between batches instead of spinning (spinning took CPU from the server's image decoders:
    1.2 ms of CPU per request with the tiny model, no speed lost on ViT-B/16)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxImageBackend:
    """The image tower's session and transform (the part of :class:`~negspace.encoders.base.Backend`
    that serving uses): ``pixel_transform`` gives ``(3, H, W)`` float32 arrays, ``encode_pixels``
    raw embeddings of a ``(B, 3, H, W)`` batch."""

    runtime = "onnxruntime"

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
        batch = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32))
        return np.asarray(self.session.run(None, {"pixels": batch})[0])


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
        self.store = store
        self.dim = backend.dim
        self.preprocess_id = backend.preprocess_id
        self.show_progress = True
        self.workers = 0
        self._load_full = load_full
        self._full: Any = None

    def __repr__(self) -> str:
        return f"OnnxImageEncoder(spec={self.spec!r}, dim={self.dim}, folder={str(self.backend.folder)!r})"

    # -- images -------------------------------------------------------------------------------

    def encode_transformed(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Unit float32 features of transformed images (``pixel_transform``'s outputs)."""
        return as_unit_float32(self.backend.encode_pixels(np.stack(list(pixels))))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Unit float32 features of in-memory images, ``(len(images), D)``."""
        transform = self.backend.pixel_transform()
        chunks = [
            self.encode_transformed([transform(im) for im in images[start : start + batch_size]])
            for start in range(0, len(images), max(1, batch_size))
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode_image_files(
        self, paths: Sequence[Path | str], batch_size: int = 64, progress: bool | None = None
    ) -> ImageEncoding:
        """Features of the readable files; an unreadable one is skipped, counted and logged."""
        from negspace.data.images import load_rgb

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
        if self._full is None:
            logger.info("Loading the text tower of %s (with torch) for a text this detector encodes", self.spec)
            self._full = self._load_full()
        return self._full

    def encode_texts(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.full_encoder().encode_texts(*args, **kwargs)

    def encode_texts_averaged(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.full_encoder().encode_texts_averaged(*args, **kwargs)


_EXPORT_SCRIPT = """
import json, sys
from negspace.encoders import load_encoder
spec, weights, cache_dir, preprocess = json.loads(sys.argv[1])
load_encoder(spec, weights=weights, device="cpu", cache_dir=cache_dir, preprocess=preprocess, runtime="onnxruntime")
"""


def export_in_subprocess(spec: str, weights: str | Path, cache_dir: str | Path | None, preprocess: str) -> bool:
    """Export the model's towers and write its image index entry in a child process, so that
    this one never imports torch; whether it succeeded (a failure is logged, and the caller's own
    load then says what is wrong in its sentence)."""
    logger.info("Exporting %s to ONNX in a separate process (once per weights; this one stays without torch)", spec)
    given = json.dumps([spec, str(weights), None if cache_dir is None else str(cache_dir), preprocess])
    done = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, given], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        logger.warning("The ONNX export process failed (%s); loading the model here", last[:300])
    return done.returncode == 0


def _read_entry(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        return None
    return data


def image_index_written(spec: str, weights: str | Path, cache_dir: str | Path | None, preprocess: str) -> bool:
    """Whether a load with torch has written this model's index entry (usable or not)."""
    store = FeatureStore.in_dir(cache_dir)
    fingerprint = weights_fingerprint(Path(weights).expanduser(), store)
    return image_index_path(store.path.parent, spec, fingerprint, preprocess).is_file()


def _agrees(features: np.ndarray, want: np.ndarray) -> bool:
    scale = np.maximum(np.linalg.norm(want, axis=1), 1e-30)
    distance = np.max(np.linalg.norm(features - want, axis=1) / scale)
    return bool(distance <= PROBE_TOLERANCE)  # NaN fails too


def load_image_encoder(
    spec: str,
    weights: str | Path | None,
    cache_dir: str | Path | None,
    preprocess: str,
    load_full: Callable[[], Any],
) -> OnnxImageEncoder | None:
    """The torch-free image encoder of a model whose ONNX export is in the cache, or ``None``.

    Args:
        spec, weights, cache_dir, preprocess: as :func:`negspace.encoders.load_encoder` takes
            them (local ``weights`` are needed: their hash names the export without building the
            model).
        load_full: loads the full encoder (``runtime="onnxruntime"``) when a text is encoded.

    Returns ``None`` (the caller loads the model the usual way, which writes the index entry)
    when ``weights`` is not given, ONNX Runtime is not installed, no checked entry exists, or
    the export does not reproduce the torch model's features of the probe (logged).
    """
    if weights is None:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    local = Path(weights).expanduser()
    if not local.exists():
        return None  # the usual load says so in its sentence
    store = FeatureStore.in_dir(cache_dir)
    root = store.path.parent
    fingerprint = weights_fingerprint(local, store)
    entry = image_index_path(root, spec, fingerprint, preprocess)
    data = _read_entry(entry)
    if data is None:
        return None
    if data.get("recipe") is None:
        return None  # this model's image transform has no exact recipe: images need torch
    folder = root / "onnx" / str(data["export"])
    try:
        recipe = ImageRecipe.from_json(data["recipe"])
        want = np.asarray(data["probe_features"], np.float32)
        session = low_memory_session(folder / IMAGE_FILE, onnx_threads())
        got = np.asarray(session.run(None, {"pixels": probe_pixels(data["probe_size"])})[0])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a damaged file
        logger.warning("The ONNX image index %s is unusable (%s); loading the model with torch", entry, err)
        return None
    if got.shape != want.shape or not _agrees(got, want):
        logger.warning("The ONNX export %s no longer gives the model's features; loading it with torch", folder)
        return None
    backend = OnnxImageBackend(session, recipe, str(data["preprocess_id"]), int(data["dim"]), folder)
    logger.info("ONNX Runtime runs the image tower of %s from %s, without torch", spec, folder)
    return OnnxImageEncoder(backend, spec=spec, fingerprint=fingerprint, store=store, load_full=load_full)
