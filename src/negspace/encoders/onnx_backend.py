"""ONNX Runtime backend (``runtime="onnxruntime"``, ``--runtime onnxruntime``).

The model is loaded with its torch backend first; its image and text towers are exported to ONNX
once (PyTorch's TorchScript exporter, batch axis dynamic; the text tower's token axis too, so
padding is trimmed as the torch backend trims it) into ``CACHE_DIR/onnx/KEY/``, where ``KEY``
hashes the model spec, the weights' fingerprint, the architecture, the exporter, the opset and the
torch version. The export is written to a temporary folder renamed into place when complete, so
an interrupted export never leaves a half file. The torch backend's tokenizer and image transform
stay; its model is dropped once the sessions are open (the sessions hold about as much memory as
the torch weights did, so the process is no smaller than eager torch's).

Every load checks the sessions against the torch model on a probe (two images, two texts): a
damaged or stale cached export is exported again, and a fresh export that does not reproduce the
torch features is refused with one sentence. ONNX Runtime runs on the CPU here, with as many
threads as torch uses (``torch.set_num_threads``, ``OMP_NUM_THREADS``).

Each load with a cache folder also writes the image index entry that lets
:func:`negspace.encoders.onnx_images.load_image_encoder` serve images without torch next time
(the transform as a recipe, where one reproduces it exactly, and the probe's torch features).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from negspace.cache import make_key
from negspace.encoders.onnx_images import cpu_session
from negspace.encoders.onnx_index import EXPORTS_FOLDER, IMAGE_FILE, PROBE_TOLERANCE, relative_distance
from negspace.errors import NegspaceError, arg

__all__ = ["EXPORT_FORMAT", "OPSET", "OnnxBackend", "load_onnx", "onnx_folder"]

logger = logging.getLogger(__name__)

#: Bumped when what is exported changes, so older exports are not reused.
EXPORT_FORMAT = 1
#: ONNX opset of the exports.
OPSET = 17
EXPORTER = "torchscript"
TEXT_FILE, INFO_FILE = "text.onnx", "export.json"
_PROBE_TEXTS = ["a photo of a cat.", "a blurry photo of a small red house by the sea."]
INSTALL = "pip install 'negspace[onnx]'"


def _check_onnxruntime() -> None:
    """ONNX Runtime and onnx are installed, or one sentence saying how to install them."""
    try:
        import onnx  # noqa: F401 - the exporter writes through it
        import onnxruntime  # noqa: F401
    except ImportError:
        raise NegspaceError(f"{arg('runtime')} onnxruntime needs ONNX Runtime and onnx: {INSTALL}.") from None


class _Call(torch.nn.Module):
    """A module whose forward is ``fn`` (what the exporter traces); ``owner`` keeps the weights."""

    def __init__(self, owner: torch.nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(*inputs)


@dataclass
class _Towers:
    """What is exported and how its text side is fed (one per model library)."""

    image: torch.nn.Module
    text: torch.nn.Module
    text_inputs: tuple[str, ...]
    text_axes: dict[int, str]  # dynamic axes of every text input
    feed: Callable[[list[str]], dict[str, np.ndarray]]
    token_counts: Callable[[list[str]], list[int]]


def _openclip_towers(backend: Any) -> _Towers:
    from negspace.encoders.openclip_backend import can_trim_padding, encode_text_prefix

    model, tokenizer = backend.model, backend.tokenizer
    trim = can_trim_padding(model)
    text_fn = (lambda tokens: encode_text_prefix(model, tokens)) if trim else model.encode_text
    return _Towers(
        image=_Call(model, model.encode_image),
        text=_Call(model, text_fn),
        text_inputs=("tokens",),
        text_axes={0: "batch", 1: "tokens"} if trim else {0: "batch"},
        feed=lambda texts: {"tokens": _openclip_tokens(tokenizer, texts, trim)},
        token_counts=lambda texts: (tokenizer(texts) != 0).sum(dim=1).tolist(),
    )


def _openclip_tokens(tokenizer: Callable[[list[str]], torch.Tensor], texts: list[str], trim: bool) -> np.ndarray:
    """Tokens of ``texts`` (CLIP pads with 0), cut after the batch's last non-padding one if ``trim``."""
    tokens = tokenizer(texts)
    if trim:
        from negspace.encoders.openclip_backend import padded_length

        tokens = tokens[:, : padded_length(tokens)]
    return np.ascontiguousarray(tokens.numpy().astype(np.int64, copy=False))


def _hf_towers(backend: Any) -> _Towers:
    from negspace.encoders.hf_backend import pooled_features

    model, tokenizer, max_length = backend.model, backend.tokenizer, backend.max_length

    def feed(texts: list[str]) -> dict[str, np.ndarray]:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return {name: np.ascontiguousarray(enc[name].astype(np.int64)) for name in ("input_ids", "attention_mask")}

    def token_counts(texts: list[str]) -> list[int]:
        return [len(row) for row in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]

    return _Towers(
        image=_Call(model, lambda pixels: pooled_features(model.get_image_features(pixel_values=pixels))),
        text=_Call(
            model,
            lambda ids, mask: pooled_features(model.get_text_features(input_ids=ids, attention_mask=mask)),
        ),
        text_inputs=("input_ids", "attention_mask"),
        text_axes={0: "batch", 1: "tokens"},
        feed=feed,
        token_counts=token_counts,
    )


def _towers(backend: Any) -> _Towers:
    from negspace.encoders.openclip_backend import OpenClipBackend

    return _openclip_towers(backend) if isinstance(backend, OpenClipBackend) else _hf_towers(backend)


class OnnxBackend:
    """Raw embeddings from ONNX Runtime sessions of the exported towers (see
    :class:`negspace.encoders.base.Backend`); tokenizer and image transform are the torch backend's."""

    runtime = "onnxruntime"

    def __init__(
        self,
        image: Any,  # onnxruntime.InferenceSession
        text: Any,
        parts: _TorchParts,
        folder: Path,
    ) -> None:
        self.image_session = image
        self.text_session = text
        self._feed = parts.feed
        self._token_counts = parts.token_counts
        self.transform = parts.transform
        self.preprocess_id = parts.preprocess_id
        self.dim = parts.dim
        self.folder = folder  # where the exported towers were read from

    def __repr__(self) -> str:
        return f"OnnxBackend(folder={str(self.folder)!r}, dim={self.dim})"

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.text_session.run(None, self._feed(texts))[0])

    def token_counts(self, texts: list[str]) -> list[int]:
        return self._token_counts(texts)

    def encode_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode_pixels(torch.stack([self.transform(im) for im in images]))

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The image transform alone (picklable: loader workers, Ray tasks)."""
        return self.transform

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a ``(B, 3, H, W)`` batch of transformed images."""
        array = np.ascontiguousarray(pixels.detach().cpu().numpy().astype(np.float32, copy=False))
        return torch.from_numpy(self.image_session.run(None, {"pixels": array})[0])


# ------------------------------------------------------------------------------ cache folder


def onnx_folder(root: Path, spec: str, fingerprint: str, model: torch.nn.Module) -> Path:
    """Where the export of ``model`` lives under the cache folder ``root``."""
    architecture = hashlib.sha256(repr(model).encode("utf-8")).hexdigest()
    dtype = str(next(model.parameters()).dtype)
    key = make_key(
        kind="onnx-towers",
        spec=spec,
        fingerprint=fingerprint,
        architecture=architecture,
        dtype=dtype,
        exporter=EXPORTER,
        opset=OPSET,
        torch=torch.__version__,
        format=EXPORT_FORMAT,
    )
    return root / EXPORTS_FOLDER / key[:32]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (IMAGE_FILE, TEXT_FILE, INFO_FILE))


def _traceable_attention(mha: torch.nn.MultiheadAttention) -> Callable[..., Any]:
    """A forward for ``mha`` (self-attention, no padding mask) whose traced graph keeps the
    sequence length dynamic: PyTorch's own forward reshapes with the traced length as a constant,
    so its export fails on any other number of tokens. Other uses fall back to the original."""
    import torch.nn.functional as F

    original = mha.forward

    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Any:
        plain = mha.in_proj_weight is not None and mha.bias_k is None and mha.dropout == 0.0
        if not plain or key_padding_mask is not None or is_causal or not (query is key is value) or query.dim() != 3:
            return original(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        x = query if mha.batch_first else query.transpose(0, 1)
        batch, _, width = x.shape
        heads = mha.num_heads
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = qkv.reshape(batch, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = F.linear(out.transpose(1, 2).reshape(batch, -1, width), mha.out_proj.weight, mha.out_proj.bias)
        return (out if mha.batch_first else out.transpose(0, 1)), None

    return forward


@contextlib.contextmanager
def _exporting(module: torch.nn.Module) -> Iterator[None]:
    """Settings the TorchScript exporter needs: PyTorch's fused attention fast path off (its
    native kernel has no ONNX form), attention traceable with any number of tokens, the tracer's
    and deprecation warnings quiet."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    patched = [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    try:
        for mha in patched:
            mha.forward = _traceable_attention(mha)  # type: ignore[method-assign]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        for mha in patched:
            del mha.forward
        torch.backends.mha.set_fastpath_enabled(was)


def _probe_pixels(backend: Any) -> torch.Tensor:
    """Two seeded random images through the model's transform."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    transform = backend.pixel_transform()
    return torch.stack([transform(im) for im in images]).float()


def _export(backend: Any, towers: _Towers, folder: Path, spec: str, fingerprint: str) -> None:
    """Export both towers of ``backend`` into ``folder``, atomically (a temporary folder beside it,
    renamed into place once complete)."""
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        pixels = _probe_pixels(backend)
        text_feed = towers.feed(list(_PROBE_TEXTS))
        with _exporting(torch.nn.ModuleList([towers.image, towers.text])):
            torch.onnx.export(
                towers.image.eval(),
                (pixels,),
                str(tmp / IMAGE_FILE),
                dynamo=False,
                opset_version=OPSET,
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            )
            torch.onnx.export(
                towers.text.eval(),
                tuple(torch.from_numpy(text_feed[name]) for name in towers.text_inputs),
                str(tmp / TEXT_FILE),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(towers.text_inputs),
                output_names=["features"],
                dynamic_axes={**dict.fromkeys(towers.text_inputs, towers.text_axes), "features": {0: "batch"}},
            )
        info = {"spec": spec, "fingerprint": fingerprint, "exporter": EXPORTER, "opset": OPSET}
        info |= {"torch": torch.__version__, "format": EXPORT_FORMAT}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if folder.exists() and not _complete(folder):  # a cached export with a file missing
            shutil.rmtree(folder)
        try:
            tmp.rename(folder)
        except OSError:
            if not _complete(folder):  # not another process's finished export: a real failure
                raise
    except OSError as exc:
        raise NegspaceError(f"Cannot write the ONNX export of {spec} under {folder.parent} ({exc}).") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Exported %s to ONNX in %.1f s: %s", spec, time.perf_counter() - started, folder)


# ------------------------------------------------------------------------------ sessions


class _Unusable(Exception):
    """An export that cannot be opened or does not reproduce the torch features."""


@dataclass
class _Probe:
    """Inputs and the torch model's features for them."""

    pixels: np.ndarray
    texts: dict[str, np.ndarray]
    image_features: np.ndarray
    text_features: np.ndarray

    @classmethod
    def of(cls, backend: Any, towers: _Towers) -> _Probe:
        pixels = _probe_pixels(backend)
        with torch.inference_mode():
            image = backend.encode_pixels(pixels).float().cpu().numpy()
            text = backend.encode_text_batch(list(_PROBE_TEXTS)).float().cpu().numpy()
        return cls(pixels.numpy(), towers.feed(list(_PROBE_TEXTS)), image, text)

    def check(self, image: Any, text: Any) -> None:
        try:
            outputs = [image.run(None, {"pixels": self.pixels})[0], text.run(None, self.texts)[0]]
        except Exception as exc:  # onnxruntime's own types: a graph with other inputs, a failing kernel
            raise _Unusable(f"it does not run ({str(exc).splitlines()[0][:160]})") from exc
        for what, got, want in zip(("image", "text"), outputs, (self.image_features, self.text_features), strict=True):
            distance = relative_distance(got, want)
            if not distance <= PROBE_TOLERANCE:  # NaN fails too
                raise _Unusable(f"its {what} features lie {distance:.3g} from torch's")


def release_memory() -> None:
    """Hand dropped weights' memory back to the system: glibc keeps freed heap blocks for reuse
    (about 400 MB of ViT-B/16's 600 MB), ``malloc_trim`` returns them."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _session(path: Path) -> Any:
    try:
        return cpu_session(path, torch.get_num_threads())
    except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid models
        raise _Unusable(f"{path.name} cannot be loaded ({str(exc).splitlines()[0][:160]})") from exc


def _open(folder: Path, probe: _Probe) -> tuple[Any, Any]:
    if not _complete(folder):
        raise _Unusable("it is incomplete")
    image, text = _session(folder / IMAGE_FILE), _session(folder / TEXT_FILE)
    probe.check(image, text)
    return image, text


@dataclass
class _ImageIndex:
    """What the torch-free image encoder needs of the model (see :mod:`negspace.encoders.onnx_images`)."""

    recipe: Any  # ImageRecipe
    probe_size: tuple[int, int]
    probe_features: np.ndarray


@dataclass
class _TorchParts:
    """What the ONNX backend keeps of the torch backend (never its model), and the probe."""

    feed: Callable[[list[str]], dict[str, np.ndarray]]
    token_counts: Callable[[list[str]], list[int]]
    transform: Callable[[Image.Image], torch.Tensor]
    preprocess_id: str
    dim: int
    probe: _Probe
    image_index: _ImageIndex | None


def _image_index(backend: Any) -> _ImageIndex | None:
    """The image transform as a recipe, where it gives the torch transform's inputs exactly (on
    images larger, smaller, wider and taller than the model's input), and the torch model's
    features of the seeded probe input; ``None`` where the transform has no recipe."""
    from negspace.encoders.image_recipe import recipe_of
    from negspace.encoders.onnx_index import probe_input

    transform = backend.pixel_transform()
    recipe = recipe_of(transform)
    if recipe is None:
        return None
    rng = np.random.default_rng(1)
    for height, width in ((375, 500), (500, 375), (17, 9), (301, 223)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        want = transform(image).numpy()
        got = recipe(image)
        if got.shape != want.shape or not np.array_equal(got, want):
            logger.info("The image transform of this model has no exact recipe: images need torch")
            return None
    size = (int(want.shape[1]), int(want.shape[2]))
    with torch.inference_mode():
        features = backend.encode_pixels(torch.from_numpy(probe_input(size))).float().cpu().numpy()
    return _ImageIndex(recipe, size, features)


def _parts(backend: Any, folder: Path, spec: str, fingerprint: str, export: bool, index: bool) -> _TorchParts:
    """Export ``backend``'s towers into ``folder`` if ``export``, and keep what outlives its model
    (with ``index``, what the image index entry needs)."""
    towers = _towers(backend)
    if export:
        _export(backend, towers, folder, spec, fingerprint)
    probe = _Probe.of(backend, towers)
    return _TorchParts(
        towers.feed,
        towers.token_counts,
        backend.pixel_transform(),
        backend.preprocess_id,
        int(backend.dim),
        probe,
        _image_index(backend) if index else None,
    )


def _write_image_index(
    parts: _TorchParts, root: Path, folder: Path, spec: str, fingerprint: str, preprocess: str
) -> None:
    from negspace.encoders.onnx_index import ImageIndexEntry, image_index_path, write_image_index

    index = parts.image_index
    entry = ImageIndexEntry(folder.name, None, parts.preprocess_id, parts.dim)
    if index is not None:
        entry = ImageIndexEntry(
            folder.name, index.recipe, parts.preprocess_id, parts.dim, index.probe_size, index.probe_features
        )
    # a model without a recipe is recorded too: no later start exports in a child for nothing
    write_image_index(image_index_path(root, spec, fingerprint, preprocess), entry)


def _refusal(spec: str, reason: _Unusable) -> NegspaceError:
    return NegspaceError(
        f"{arg('runtime')} onnxruntime: the ONNX export of {spec} is unusable ({reason}); use {arg('runtime')} torch."
    )


def load_onnx(
    load_torch: Callable[[], tuple[Any, str]], spec: str, cache_root: Path | None, preprocess: str = "model"
) -> tuple[OnnxBackend, str]:
    """The ONNX Runtime backend of the model ``load_torch`` loads, and its weights fingerprint.

    Args:
        load_torch: loads the torch backend (called again only when a cached export is unusable).
        spec: the model spec (part of the export's key, named in messages).
        cache_root: the cache folder; ``None`` exports into a temporary folder removed once the
            sessions are open (``use_cache=False`` writes nothing that stays).
        preprocess: the preprocessing's name, under which the image index entry is written
            (what lets :func:`negspace.encoders.onnx_images.load_image_encoder` serve images
            without torch next time).
    """
    _check_onnxruntime()  # before any model loads
    backend, fingerprint = load_torch()
    with contextlib.ExitStack() as stack:
        root = cache_root if cache_root is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder = onnx_folder(root, spec, fingerprint, backend.model)
        fresh = not _complete(folder)
        while True:  # a cached export that proves unusable is exported once again; a fresh one is final
            parts = _parts(backend, folder, spec, fingerprint, export=fresh, index=cache_root is not None)
            del backend  # the torch weights go: the sessions hold their own copy
            release_memory()
            try:
                image, text = _open(folder, parts.probe)
                break
            except _Unusable as exc:
                if fresh:
                    raise _refusal(spec, exc) from None
                logger.warning("The cached ONNX export %s is unusable (%s); exporting it again", folder, exc)
                shutil.rmtree(folder, ignore_errors=True)
                backend, _ = load_torch()
                fresh = True
        release_memory()  # and what reading the ONNX files left
        if cache_root is not None:
            _write_image_index(parts, root, folder, spec, fingerprint, preprocess)
            logger.info("ONNX Runtime runs %s from %s", spec, folder)
    return OnnxBackend(image, text, parts, folder if cache_root is not None else Path("<temporary>")), fingerprint
