"""A local transformers vision-language model as an MLLM backend (``hf:NAME_OR_PATH``).

A text-only chat model (any ``AutoModelForCausalLM`` with a chat template, e.g.
``Qwen/Qwen2.5-7B-Instruct``) loads too, for ``--mllm-text``; it answers text-only requests and
fails (``None``) requests with images.

Tested shapes: Qwen2-VL / Qwen2.5-VL and LLaVA-1.5 (``llava-hf/llava-1.5-7b-hf``), i.e. any model
that ``AutoModelForImageTextToText`` loads and whose ``AutoProcessor`` has a chat template.
Requests are grouped by generation parameters and by whether they carry images, run in batches
with left padding, greedy unless ``temperature > 0``, on CPU or CUDA (fp16 there).

:func:`build_hf_messages` turns a :class:`~negspace.mllm.protocol.ChatRequest` into the
``[{"role": ..., "content": [{"type": "image"}, {"type": "text", "text": ...}]}]`` structure
chat templates expect, plus the list of RGB images in order; it is pure and tested alone.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from negspace.errors import NegspaceError, WeightsUnavailableError, arg
from negspace.mllm.protocol import ChatRequest, ImagePart, MLLMStats, TextPart

__all__ = ["HFVisionChatBackend", "build_hf_messages", "load_rgb"]

logger = logging.getLogger(__name__)


def load_rgb(image: Path | str | Image.Image, image_size: int | None = None) -> Image.Image:
    """An RGB PIL image (EXIF orientation applied), longest side at most ``image_size``."""
    if isinstance(image, (str, Path)):
        with Image.open(Path(image)) as im:
            im.load()
            img = (ImageOps.exif_transpose(im) or im).copy()
    else:
        img = image
    if img.mode != "RGB":
        img = img.convert("RGB")
    if image_size is not None and max(img.size) > image_size:
        img = img.copy()
        img.thumbnail((image_size, image_size), Image.Resampling.BICUBIC)
    return img


def build_hf_messages(
    request: ChatRequest,
    image_size: int | None = None,
    load_images: bool = True,
    text_only: bool = False,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Chat-template messages and the images they refer to, in order.

    Each image part becomes ``{"type": "image"}`` in the content list (the processor receives
    the pixels separately, in the same order), each text part ``{"type": "text", "text": ...}``.
    With ``load_images=False`` the image list holds the original objects (paths or PIL images).
    With ``text_only=True`` (a text-only chat model's tokenizer template) each message's content
    is its text parts joined into one string, and image parts are an error.
    """
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for msg in request.messages:
        if text_only:
            if any(isinstance(p, ImagePart) for p in msg.content):
                raise ValueError("a text-only model cannot take image parts")
            messages.append(
                {"role": msg.role, "content": "".join(p.text for p in msg.content if isinstance(p, TextPart))}
            )
            continue
        content: list[dict[str, Any]] = []
        for part in msg.content:
            if isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(load_rgb(part.image, image_size) if load_images else part.image)
            else:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": msg.role, "content": content})
    return messages, images


# A hub id: NAME or ORG/NAME (what huggingface_hub accepts); anything else with a slash is a path.
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
_FOLDER_HINT = "pass hf:/path/to/folder naming a folder written by save_pretrained"


def _looks_like_path(name: str) -> bool:
    from negspace.encoders.hf_backend import PATH_PREFIXES

    if name.startswith(PATH_PREFIXES):
        return True
    seps = {os.sep, os.altsep or os.sep}
    return any(sep in name for sep in seps) and not _HUB_ID.match(name)


def _folder_name(name: str, folder: Path) -> str:
    """The folder as the user wrote it, and where that resolved to if it differs."""
    return str(folder) if str(folder) == name else f"{folder} (from hf:{name})"


def _source(name: str) -> tuple[str, bool]:
    """What to pass to ``from_pretrained``, and whether it is a local folder."""
    if not name:
        raise NegspaceError("The MLLM spec 'hf:' names no model; use hf:NAME_OR_PATH.")
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NegspaceError(f"The MLLM hf:{name} names {local}, which is a file, not a folder; {_FOLDER_HINT}.")
        return str(local), True
    if _looks_like_path(name):
        raise NegspaceError(f"The MLLM folder {_folder_name(name, local.absolute())} does not exist; {_FOLDER_HINT}.")
    return name, False


def _in_hub_cache(repo_id: str) -> bool:
    """Is the model's config.json in the local hub cache (where transformers looks too)?"""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001  (an odd id or cache: let transformers decide)
        return True


def _first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's message, trimmed (transformers writes paragraphs)."""
    from negspace.encoders.weights import short_reason

    return short_reason(exc).split(". ")[0].rstrip(".")


def _hub_error(name: str, hub: Any, exc: BaseException | None = None) -> WeightsUnavailableError:
    """One sentence for a hub id that could not be loaded."""
    from negspace.encoders.weights import NOT_ON_HUB_ERRORS, UNREACHABLE_ERRORS, exception_chain

    names = {type(e).__name__ for e in exception_chain(exc)} if exc is not None else set()
    if exc is not None:
        logger.debug("Loading hf:%s from the hub failed", name, exc_info=exc)
    if hub.reason:
        reason = f"{hub.reason} and it is not in the local hub cache"
    elif names & UNREACHABLE_ERRORS:
        reason = "the hub is unreachable and it is not in the local hub cache"
    elif names & NOT_ON_HUB_ERRORS:
        reason = "the hub has no such model (or it is private; check the name)"
    else:
        reason = f"downloading it failed ({_first_sentence(exc)})" if exc is not None else "it failed"
    return WeightsUnavailableError(
        f"Could not load the MLLM hf:{name}: {reason}; download it on a machine with access "
        f"(e.g. hf download {name} --local-dir DIR) and pass that folder as hf:/path/to/folder."
    )


def _folder_error(name: str, folder: Path, exc: BaseException) -> WeightsUnavailableError:
    """One sentence for a local folder that holds no loadable model."""
    logger.debug("Loading hf:%s from %s failed", name, folder, exc_info=exc)
    why = (
        "no config.json"
        if not (folder / "config.json").is_file()
        else (f"no model transformers can load ({_first_sentence(exc)})")
    )
    return WeightsUnavailableError(
        f"The MLLM folder {_folder_name(name, folder)} holds {why}; {_FOLDER_HINT} with the "
        "model and its processor or tokenizer."
    )


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NegspaceError(
            f"{arg('device')} {device} was asked for but CUDA is not available; use {arg('device')} cpu."
        )
    return device


class HFVisionChatBackend:
    """A transformers vision-language model answering chat requests locally.

    Args:
        name_or_path: a hub id (used when online or cached) or a ``save_pretrained`` folder.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        batch_size: requests per ``generate`` call.
        image_size: images are downscaled so that the longest side is at most this.
        dtype: torch dtype name; default float16 on CUDA, float32 on CPU.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "auto",
        batch_size: int = 8,
        image_size: int = 448,
        dtype: str | None = None,
    ) -> None:
        # Cheap checks first: a missing folder is reported before torch and transformers load.
        name = str(name_or_path).strip()
        source, is_local = _source(name)
        load_kw: dict[str, Any] = {"local_files_only": True} if is_local else {}

        import torch

        from negspace.encoders.weights import LOAD_ERRORS, HubAccess, hub_access

        self.name_or_path = name
        self.device = _resolve_device(device)
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.text_only = False
        self.model: Any = None  # an image-text-to-text model, or a causal LM for text-only chat
        # Off the network (or HF_HUB_OFFLINE) the hub is used cache-only for this load, so a
        # missing model fails at once instead of after huggingface_hub's retries.
        with nullcontext(HubAccess()) if is_local else hub_access() as hub:
            if hub.reason and not _in_hub_cache(name):
                raise _hub_error(name, hub)  # before importing transformers' model code
            try:
                import transformers
                from transformers import AutoProcessor
            except ImportError:
                raise NegspaceError('A local hf: MLLM needs transformers: pip install "negspace[hf]".') from None
            try:
                from transformers import AutoModelForImageTextToText as AutoVLM
            except ImportError:  # transformers < 4.46
                # the name transformers < 4.46 has (removed in 5, the version mypy sees)
                from transformers import AutoModelForVision2Seq as AutoVLM  # type: ignore[attr-defined,no-redef]

            torch_dtype = (
                getattr(torch, dtype) if dtype else (torch.float16 if self.device.startswith("cuda") else torch.float32)
            )
            # transformers renamed torch_dtype to dtype in 4.56
            major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
            dtype_kw = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch_dtype}
            try:
                try:
                    self.model = AutoVLM.from_pretrained(source, **load_kw, **dtype_kw)
                    self.processor = AutoProcessor.from_pretrained(source, **load_kw)
                except ValueError:
                    # Not a vision-language architecture: a text-only chat model (for --mllm-text).
                    from transformers import AutoModelForCausalLM, AutoTokenizer

                    self.model = AutoModelForCausalLM.from_pretrained(source, **load_kw, **dtype_kw)
                    self.processor = AutoTokenizer.from_pretrained(source, **load_kw)
                    self.text_only = True
            except LOAD_ERRORS as err:
                if is_local:
                    raise _folder_error(name, Path(source), err) from err
                raise _hub_error(name, hub, err) from err
        self.model.to(self.device).eval()
        tok = self.processor if self.text_only else getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        # The answer depends on the pixels the model saw, so the image size is part of the identity.
        self.model_id = f"hf:{self.name_or_path}?image_size={self.image_size}"
        self.stats = MLLMStats()

    def __repr__(self) -> str:
        return f"HFVisionChatBackend({self.name_or_path!r}, device={self.device!r})"

    def describe(self, sends_images: bool = True) -> dict[str, Any]:
        """The local model (hub name or folder) and its device; the image size only where images
        are sent (see ``describe_model``)."""
        described: dict[str, Any] = {"backend": "hf", "model": str(self.name_or_path), "device": str(self.device)}
        if sends_images and not self.text_only:
            described["image_size"] = self.image_size
        return described

    def check(self) -> None:
        """Nothing to check: the model loaded in the constructor."""

    def _run_batch(self, batch: Sequence[ChatRequest]) -> list[str | None]:
        import torch

        texts: list[str] = []
        images: list[Image.Image] = []
        for req in batch:
            if self.text_only and req.has_images:
                raise ValueError(f"{self.name_or_path} is a text-only model and cannot see images")
            messages, imgs = build_hf_messages(req, self.image_size, text_only=self.text_only)
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            images.extend(imgs)
        if self.text_only:
            inputs = self.processor(texts, padding=True, return_tensors="pt", add_special_tokens=False).to(self.device)
        else:
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            inputs = self.processor(**kwargs).to(self.device)
        params = batch[0].params
        gen: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": params.temperature > 0}
        if params.temperature > 0:
            gen["temperature"] = params.temperature
            torch.manual_seed(params.seed)
        tok = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tok, "pad_token_id", None) is not None:
            gen["pad_token_id"] = tok.pad_token_id
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [d.strip() for d in decoded]

    def generate(self, requests: Sequence[ChatRequest]) -> list[str | None]:
        """Answer requests in batches grouped by (params, has_images); failures give None."""
        requests = list(requests)
        answers: list[str | None] = [None] * len(requests)
        groups: dict[tuple[Any, bool], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.params, req.has_images), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                self.stats.calls += len(chunk)
                try:
                    results = self._run_batch([requests[i] for i in chunk])
                except Exception as err:  # noqa: BLE001  (a bad image or OOM fails this batch only)
                    logger.warning("Local MLLM batch of %d failed: %s", len(chunk), err)
                    self.stats.failures += len(chunk)
                    continue
                for i, ans in zip(chunk, results, strict=False):
                    answers[i] = ans
        return answers
