"""CLIP encoders: one front end (:class:`ClipEncoder`) over open_clip and transformers models.

    >>> enc = load_encoder("openclip:ViT-B-16/openai")  # doctest: +SKIP
    >>> text = enc.encode_texts(["cat", "dog"], template="a photo of a {}.")  # doctest: +SKIP
    >>> imgs = enc.encode_image_files(paths)  # doctest: +SKIP

Features are float32 numpy arrays with L2-normalised rows. Text and image-file features are
cached on disk (see :mod:`negspace.cache`).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from negspace.encoders.preprocess import PREPROCESS_CHOICES, check_preprocess
from negspace.encoders.runtimes import RUNTIMES, check_runtime
from negspace.errors import NegspaceError, arg

if TYPE_CHECKING:
    from negspace.encoders.base import Backend, ClipEncoder, ImageEncoding, SkippedFile, resolve_device

# torch, open_clip and torchvision take seconds to import: the encoder classes load on first use,
# so that parsing a command line (or `import negspace.encoders` for its choices) stays instant.
_LAZY = dict.fromkeys(
    ("SPEC_FORMS", "Backend", "ClipEncoder", "ImageEncoding", "SkippedFile", "resolve_device"), "negspace.encoders.base"
)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'negspace.encoders' has no attribute {name!r}")


__all__ = [
    "PREPROCESS_CHOICES",
    "RUNTIMES",
    "ClipEncoder",
    "ImageEncoding",
    "SkippedFile",
    "load_encoder",
    "resolve_device",
]

logger = logging.getLogger(__name__)


def load_encoder(
    spec: str,
    weights: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    preprocess: str = "model",
    runtime: str = "torch",
) -> ClipEncoder:
    """Load a CLIP model and wrap it as a :class:`ClipEncoder`.

    Args:
        spec: ``openclip:ARCH/PRETRAINED`` (e.g. ``openclip:ViT-B-16/openai``; ARCH may also be
            a model-config JSON path, or ``hf-hub:ORG/REPO``) or ``hf:NAME_OR_PATH`` (a hub id
            or a ``save_pretrained`` folder; needs ``pip install "negspace[hf]"``).
        weights: a local checkpoint file (open_clip) or folder (either backend) used instead of
            downloading; what ``--weights`` sets.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``. Models run in fp16 on CUDA, fp32 elsewhere.
        cache_dir: folder of the feature cache (default :func:`negspace.cache.default_cache_dir`).
        use_cache: False encodes everything afresh and writes nothing to disk.
        preprocess: ``"model"`` (the library's eval transform) or ``"openood"`` (resize 256
            bicubic, centre crop 224, for a 224-pixel model).
        runtime: ``"torch"`` (eager PyTorch) or ``"onnxruntime"``: the towers exported to ONNX
            once (cached under ``cache_dir``, keyed by the weights' fingerprint) and run by ONNX
            Runtime on the CPU (``device`` must be ``"auto"`` or ``"cpu"``; needs
            ``pip install "negspace[onnx]"``). Features agree with torch's within float32
            rounding and share its feature cache.

    Raises:
        NegspaceError: malformed spec, unknown architecture, unavailable device.
        WeightsUnavailableError: the weights can be neither downloaded nor read locally.
    """
    from negspace.cache import FeatureStore
    from negspace.encoders.base import SPEC_FORMS, ClipEncoder, resolve_device

    if not isinstance(spec, str) or ":" not in spec:
        raise NegspaceError(f"Model spec {spec!r} is not valid; use {SPEC_FORMS}.")
    kind, rest = spec.split(":", 1)
    kind = kind.strip().lower()
    check_preprocess(preprocess)
    check_runtime(runtime)
    dev = resolve_device("cpu" if runtime == "onnxruntime" and str(device).strip().lower() == "auto" else device)
    if runtime == "onnxruntime" and dev.type != "cpu":
        raise NegspaceError(
            f"{arg('runtime')} onnxruntime runs on the CPU; use {arg('device')} cpu, "
            f"or {arg('runtime')} torch on {dev}."
        )
    weights_path = Path(weights).expanduser() if weights is not None else None
    store = FeatureStore.in_dir(cache_dir) if use_cache else None

    if kind not in ("openclip", "hf"):
        raise NegspaceError(f"Unknown model kind {kind!r} in {spec!r}; use {SPEC_FORMS}.")

    def load_torch() -> tuple[Backend, str]:
        if kind == "openclip":
            from negspace.encoders.openclip_backend import load_openclip

            return load_openclip(spec, rest, weights_path, dev, store, preprocess)
        from negspace.encoders.hf_backend import load_hf

        return load_hf(spec, rest, weights_path, dev, store, preprocess)

    backend: Backend
    if runtime == "onnxruntime":
        from negspace.encoders.onnx_backend import load_onnx

        cache_root = store.path.parent if store is not None else None
        backend, fingerprint = load_onnx(load_torch, spec, cache_root, preprocess)
    else:
        backend, fingerprint = load_torch()
    logger.info("Loaded %s on %s with %s (weights %s)", spec, dev, runtime, fingerprint)
    return ClipEncoder(backend, spec=spec, fingerprint=fingerprint, device=dev, store=store)
