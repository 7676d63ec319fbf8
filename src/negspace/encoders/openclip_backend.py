"""open_clip backend: specs ``openclip:ARCH/PRETRAINED``.

``ARCH`` is one of

* an open_clip architecture name (``ViT-B-16``; ``ViT-B/16`` is accepted too),
* a path to an open_clip model config JSON (``embed_dim``, ``vision_cfg``, ``text_cfg``), for
  custom architectures such as the tiny test models,
* ``hf-hub:ORG/REPO`` or ``local-dir:FOLDER``, open_clip's own schemas (no ``/PRETRAINED``).

``PRETRAINED`` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...) or ``none``. With
``weights=PATH`` the checkpoint is read from that file (or from an open_clip folder holding
``open_clip_config.json``); a known tag still supplies its preprocessing and activation settings,
so ``openclip:ViT-B-16/openai`` with a downloaded checkpoint behaves exactly like the hub copy.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from negspace.cache import FeatureStore, weights_fingerprint
from negspace.encoders.base import SPEC_FORMS
from negspace.encoders.preprocess import check_preprocess, openood_transform, stable_id
from negspace.encoders.weights import (
    LOAD_ERRORS,
    STATE_DICT_EXPECTED,
    HubAccess,
    check_state_dict_file,
    folder_error,
    hub_access,
    hub_error,
    missing_path_error,
    no_weights_error,
    not_a_checkpoint_error,
    openclip_hub_repo_source,
    openclip_source,
    short_reason,
    unreadable_weights_error,
)
from negspace.errors import NegspaceError

__all__ = ["OpenClipBackend", "encode_text_prefix", "load_openclip", "padded_length", "parse_openclip_spec"]

logger = logging.getLogger(__name__)

_SCHEMAS = ("hf-hub:", "local-dir:")
_NO_TAG = {"", "none", "null", "random"}
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def parse_openclip_spec(rest: str) -> tuple[str, str | None]:
    """Split the part after ``openclip:`` into (arch, tag or None)."""
    rest = rest.strip()
    if rest.startswith(_SCHEMAS) or rest.lower().endswith(".json"):
        arch, tag = rest, None
    elif "/" in rest:
        arch, tag = rest.rsplit("/", 1)
    else:
        arch, tag = rest, None
    if tag is not None and tag.strip().lower() in _NO_TAG:
        tag = None
    if not arch.strip():
        raise NegspaceError(f"Model spec 'openclip:{rest}' names no architecture; use {SPEC_FORMS}.")
    return arch.strip(), tag.strip() if tag else None


def _register_config_file(path: Path) -> str:
    """Make a model config JSON known to open_clip and return its architecture name."""
    import open_clip

    if not path.is_file():
        raise NegspaceError(f"Model config file {path} does not exist; use {SPEC_FORMS}.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NegspaceError(f"Model config file {path} is not readable JSON ({exc}).") from exc
    if not isinstance(cfg, dict) or not all(k in cfg for k in _CONFIG_KEYS):
        raise NegspaceError(
            f"Model config file {path} is not an open_clip model config (it needs "
            f"{', '.join(_CONFIG_KEYS)}); for a folder with open_clip_config.json use "
            "openclip:local-dir:FOLDER."
        )
    name = path.stem
    known = open_clip.get_model_config(name)
    if known is None:
        # open_clip names configs by file stem; registering also rescans its own folder.
        open_clip.add_model_config(path)
    elif known != cfg:
        raise NegspaceError(
            f"Model config file {path} is named like a different open_clip architecture ({name}); rename the file."
        )
    return name


def _resolve_arch(arch: str) -> str:
    """Return the name open_clip's factory accepts for ``arch``."""
    import open_clip

    if arch.startswith(_SCHEMAS):
        return arch
    if arch.lower().endswith(".json"):
        return _register_config_file(Path(arch).expanduser())
    name = arch.replace("/", "-")
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise NegspaceError(
            f"Unknown open_clip architecture {arch!r}{hint}; use {SPEC_FORMS} "
            "(open_clip.list_models() lists the architectures)."
        )
    return name


def _hub_revision(local_file: str | Path) -> str:
    """The commit a hub download came from (``.../snapshots/<commit>/file``), else the path."""
    parts = Path(local_file).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return Path(local_file).name


def _checkpoint_in_folder(folder: Path) -> Path | None:
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in folder.glob(ext))
    return found[0] if len(found) == 1 else None


def can_trim_padding(model: Any) -> bool:
    """Whether padding can be dropped from ``model``'s text input without changing its features.

    True for the classic ``open_clip.CLIP`` text tower with a causal mask and EOT/EOS pooling:
    the pooled position attends only to earlier tokens, so the padding after the longest text of
    a batch never influences it.
    """
    import open_clip

    return (
        type(model) is open_clip.CLIP
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def padded_length(tokens: torch.Tensor) -> int:
    """One past the last non-padding token of the batch (CLIP pads with 0)."""
    return int((tokens != 0).any(dim=0).nonzero().max()) + 1


def encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the first ``L`` positions only.

    ``L`` is one past the last non-padding token of the batch. CLIP pads every prompt to 77
    tokens while a WordNet prompt needs about 8, so this makes corpus encoding several times
    faster on a CPU; the result equals the full forward (tested).
    """
    return encode_text_prefix(model, tokens[:, : padded_length(tokens)])


def encode_text_prefix(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` of tokens cut to their first ``L = tokens.shape[1]`` positions (the
    causal mask and positional embedding cut to match); ``L`` is read from the shape, so a traced
    export of this function takes any length."""
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


class OpenClipBackend:
    """Raw open_clip embeddings (see :class:`negspace.encoders.base.Backend`)."""

    def __init__(
        self,
        model: Any,  # open_clip.CLIP or CustomTextCLIP
        tokenizer: Callable[[list[str]], torch.Tensor],
        transform: Callable[[Image.Image], torch.Tensor],
        preprocess_id: str,
        device: torch.device,
        input_dtype: torch.dtype,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.transform = transform
        self.preprocess_id = preprocess_id
        self.device = device
        self.input_dtype = input_dtype
        with torch.inference_mode():
            self.dim = int(self.encode_text_batch(["a"]).shape[-1])

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        if can_trim_padding(self.model):
            return encode_text_trimmed(self.model, tokens)
        return self.model.encode_text(tokens)

    def token_counts(self, texts: list[str]) -> list[int]:
        # CLIP's tokenizer pads with id 0; for another tokenizer this is only a sorting hint
        return (self.tokenizer(texts) != 0).sum(dim=1).tolist()

    def encode_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode_pixels(torch.stack([self.transform(im) for im in images]))

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The image transform alone (picklable without the model: loader workers, Ray tasks)."""
        return self.transform

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a ``(B, 3, H, W)`` batch of transformed images."""
        pixels = pixels.to(self.device, dtype=self.input_dtype, non_blocking=True)
        if self.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.model.encode_image(pixels)


@dataclass
class _Weights:
    """Where an open_clip model's weights come from."""

    name: str  # what open_clip's factory is given (an arch name or a schema)
    checkpoint: str | None  # full-CLIP checkpoint file, or None when the schema brings its own
    local: Path | None  # the user's local file/folder, if any
    fingerprint: str


def _local_weights(spec: str, name: str, weights: Path, store: FeatureStore | None) -> _Weights:
    local = weights.expanduser()
    if not local.exists():
        raise missing_path_error(spec, local)
    checkpoint: str | None = str(local)
    if local.is_dir():
        if (local / "open_clip_config.json").is_file():
            # An open_clip folder (as on the hub) carries its own config and checkpoint.
            name, checkpoint = f"local-dir:{local}", None
            inner = [local / f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
            for file in [f for f in inner if f.is_file()][:1]:
                check_state_dict_file(spec, local, file)
        else:
            found = _checkpoint_in_folder(local)
            if found is None:
                raise folder_error(spec, local)
            checkpoint = str(found)
    if checkpoint is not None:  # text, random bytes or a pickle of something else: one sentence, now
        check_state_dict_file(spec, local, Path(checkpoint))
    return _Weights(name, checkpoint, local, weights_fingerprint(local, store))


def _hub_weights(
    spec: str, name: str, tag: str | None, tag_cfg: dict[str, Any], store: FeatureStore | None
) -> _Weights:
    import open_clip
    from open_clip.pretrained import download_pretrained_from_hf

    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        if not folder.is_dir():
            raise missing_path_error(spec, folder)
        return _Weights(name, None, folder, weights_fingerprint(folder, store))
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:") :]
        # Fetch now, so a missing download fails before the model is built; the factory then
        # finds both files in the hub cache.
        config = download_pretrained_from_hf(repo, filename="open_clip_config.json")
        download_pretrained_from_hf(repo)
        return _Weights(name, None, None, f"hub:{repo}@{_hub_revision(config)}")
    if not tag_cfg:
        raise no_weights_error(spec, f"the spec names no pretrained tag for {name}")
    checkpoint = open_clip.download_pretrained(tag_cfg)
    if not checkpoint:
        raise FileNotFoundError(f"open_clip has no download for {name}/{tag}")
    return _Weights(name, checkpoint, None, f"hub:{name}/{tag}@{_hub_revision(checkpoint)}")


def _weights_source(name: str, tag_cfg: dict[str, Any]) -> str:
    """Which file to download, and from where, when the hub cannot be reached."""
    if name.startswith("hf-hub:"):
        return openclip_hub_repo_source(name[len("hf-hub:") :])
    if tag_cfg.get("hf_hub"):
        return openclip_source(tag_cfg["hf_hub"])
    if tag_cfg.get("url"):
        return f"the file {tag_cfg['url'].rsplit('/', 1)[-1]} from {tag_cfg['url']}"
    return ""


def _needs_hub(name: str, local: Path | None) -> bool:
    """Whether loading may touch the hub: hub weights, or a tokenizer that lives there."""
    import open_clip

    if local is None or name.startswith("hf-hub:"):
        return True
    try:
        cfg = open_clip.get_model_config(name) or {}
    except (OSError, ValueError):
        return True
    return bool(cfg.get("text_cfg", {}).get("hf_tokenizer_name"))


def load_openclip(
    spec: str,
    rest: str,
    weights: Path | None,
    device: torch.device,
    store: FeatureStore | None,
    preprocess: str = "model",
) -> tuple[OpenClipBackend, str]:
    """Load an open_clip model; returns the backend and the weights fingerprint."""
    import open_clip

    check_preprocess(preprocess)
    arch, tag = parse_openclip_spec(rest)
    name = _resolve_arch(arch)
    tag_cfg: dict[str, Any] = {}
    if tag is not None and not name.startswith(_SCHEMAS):
        tag_cfg = open_clip.get_pretrained_cfg(name, tag)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise NegspaceError(
                f"Unknown pretrained tag {tag!r} for open_clip {name}; known tags: "
                f"{', '.join(tags) if tags else 'none (pass --weights PATH)'}."
            )

    precision = "fp16" if device.type == "cuda" else "fp32"
    local = weights.expanduser() if weights is not None else None
    access = hub_access() if _needs_hub(name, local) else nullcontext(HubAccess())
    with access as hub:
        if weights is not None:
            src = _local_weights(spec, name, weights, store)
        else:
            try:
                src = _hub_weights(spec, name, tag, tag_cfg, store)
            except NegspaceError:
                raise
            except Exception as exc:  # hub clients and urllib raise many types
                raise hub_error(spec, exc, hub, _weights_source(name, tag_cfg)) from exc
        if src.name.startswith("local-dir:"):
            tag_cfg = {}  # the folder's own config decides
        try:
            model, _, val_transform = open_clip.create_model_and_transforms(
                src.name,
                pretrained=src.checkpoint,
                precision=precision,
                device=device,
                # open_clip 3.x warns but does not switch activations when a tag was trained
                # with QuickGELU (e.g. ViT-B-16/openai); without this the features are wrong.
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
                # Only whole-CLIP checkpoints are loaded: never fetch separate tower weights.
                pretrained_text=False,
                pretrained_image=False,
            )
            tokenizer = open_clip.get_tokenizer(src.name)
        except LOAD_ERRORS as exc:
            if src.local is not None:  # the user's --weights: a checkpoint of another architecture
                raise not_a_checkpoint_error(
                    spec, src.local, "a state dict of this architecture", short_reason(exc)
                ) from exc
            if src.checkpoint:
                raise unreadable_weights_error(spec, Path(src.checkpoint), exc) from exc
            raise hub_error(spec, exc, hub) from exc
        except AttributeError as exc:
            # open_clip reads .npy/.npz as big_vision weights, which only its timm SigLIP towers have
            if src.local is None or Path(src.checkpoint or "").suffix.lower() not in (".npy", ".npz"):
                raise
            raise not_a_checkpoint_error(
                spec,
                src.local,
                STATE_DICT_EXPECTED,
                "NumPy arrays are read only as the big_vision weights of a SigLIP model",
            ) from exc

    pp_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
    if preprocess == "openood":
        size = pp_cfg.get("size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        transform, preprocess_id = openood_transform(int(size), pp_cfg["mean"], pp_cfg["std"])
    else:
        transform, preprocess_id = val_transform, stable_id("openclip", pp_cfg)
    backend = OpenClipBackend(
        model,
        tokenizer,
        transform,
        preprocess_id,
        device,
        input_dtype=torch.float16 if precision == "fp16" else torch.float32,
    )
    return backend, src.fingerprint
