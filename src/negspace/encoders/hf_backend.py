"""Hugging Face transformers backend: specs ``hf:NAME_OR_PATH``.

``NAME_OR_PATH`` is a hub id (``openai/clip-vit-base-patch16``) or a folder written by
``save_pretrained`` holding the model, its tokenizer and its image processor. ``weights=FOLDER``
loads that folder instead of the hub copy (the spec then only names the model).
transformers is an optional dependency: ``pip install "negspace[hf]"``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from negspace.cache import FeatureStore, weights_fingerprint
from negspace.encoders.preprocess import check_preprocess, openood_transform, stable_id
from negspace.encoders.weights import (
    HF_FOLDER_EXPECTED,
    LOAD_ERRORS,
    HubAccess,
    hub_access,
    hub_error,
    missing_path_error,
    not_a_checkpoint_error,
    short_reason,
    transformers_source,
    unreadable_weights_error,
)
from negspace.errors import NegspaceError

__all__ = ["HFClipBackend", "load_hf", "pooled_features"]

logger = logging.getLogger(__name__)

PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise NegspaceError(
            'hf: model specs need Hugging Face transformers; install it with pip install "negspace[hf]".'
        ) from exc
    return transformers


def pooled_features(output: Any) -> torch.Tensor:
    """The projected features of a ``get_text_features``/``get_image_features`` call."""
    # transformers 4.x returns the projected tensor; 5.x a model output whose pooler_output is it.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class HFClipBackend:
    """Raw transformers CLIP embeddings (see :class:`negspace.encoders.base.Backend`)."""

    def __init__(
        self,
        model: Any,  # transformers.CLIPModel
        tokenizer: Any,
        image_processor: Any,
        transform: Callable[[Image.Image], torch.Tensor] | None,
        preprocess_id: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.transform = transform
        self.preprocess_id = preprocess_id
        self.device = device
        self.dtype = dtype
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.dim = int(model.config.projection_dim)

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return pooled_features(
            self.model.get_text_features(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
            )
        )

    def token_counts(self, texts: list[str]) -> list[int]:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [len(row) for row in ids]

    def encode_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        if self.transform is not None:
            pixels = torch.stack([self.transform(im) for im in images])
        else:
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return self.encode_pixels(pixels)

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The image transform alone (picklable without the model: loader workers, Ray tasks)."""
        if self.transform is not None:
            return self.transform
        return functools.partial(_processed_pixels, self.image_processor)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a ``(B, 3, H, W)`` batch of transformed images."""
        return pooled_features(
            self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.dtype, non_blocking=True))
        )


def _processed_pixels(image_processor: Any, image: Image.Image) -> torch.Tensor:
    return image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


def _source(spec: str, name: str, weights: Path | None) -> tuple[str | Path, bool]:
    """Where to load from, and whether that is a local folder."""
    if weights is not None:
        local = Path(weights).expanduser()
        if not local.exists():
            raise missing_path_error(spec, local)
        if not local.is_dir():
            raise not_a_checkpoint_error(spec, local, HF_FOLDER_EXPECTED, "it is a file")
        return local, True
    local = Path(name).expanduser()
    if local.exists():
        return local, True
    if name.startswith(PATH_PREFIXES):
        raise missing_path_error(spec, local)
    return name, False


def load_hf(
    spec: str,
    rest: str,
    weights: Path | None,
    device: torch.device,
    store: FeatureStore | None,
    preprocess: str = "model",
) -> tuple[HFClipBackend, str]:
    """Load a transformers CLIP model; returns the backend and the weights fingerprint."""
    check_preprocess(preprocess)
    transformers = _import_transformers()
    name = rest.strip()
    if not name:
        raise NegspaceError("Model spec 'hf:' names no model; use hf:NAME_OR_PATH.")
    source, is_local = _source(spec, name, weights)
    # A local folder never touches the network, even when the hub is reachable.
    kwargs: dict[str, Any] = {"local_files_only": True} if is_local else {}
    with nullcontext(HubAccess()) if is_local else hub_access() as hub:
        try:
            model = transformers.CLIPModel.from_pretrained(source, **kwargs)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
            image_processor = transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
        except LOAD_ERRORS as exc:
            if weights is not None:  # the user's --weights folder holds no model of this kind
                raise not_a_checkpoint_error(spec, Path(source), HF_FOLDER_EXPECTED, short_reason(exc)) from exc
            if is_local:
                raise unreadable_weights_error(spec, Path(source), exc) from exc
            raise hub_error(spec, exc, hub, transformers_source(name)) from exc

    if is_local:
        fingerprint = weights_fingerprint(Path(source), store)
    else:
        revision = getattr(model.config, "_commit_hash", None) or "unknown-revision"
        fingerprint = f"hub:{name}@{revision}"

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = model.to(device=device, dtype=dtype)
    transform: Callable[[Image.Image], torch.Tensor] | None = None
    if preprocess == "openood":
        transform, preprocess_id = openood_transform(
            int(model.config.vision_config.image_size),
            image_processor.image_mean,
            image_processor.image_std,
        )
    else:
        params = {k: v for k, v in image_processor.to_dict().items() if not k.startswith("_")}
        preprocess_id = stable_id("hf", params)
    backend = HFClipBackend(model, tokenizer, image_processor, transform, preprocess_id, device, dtype)
    return backend, fingerprint
