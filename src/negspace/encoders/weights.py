"""Turning weight-loading failures into one sentence a person can act on."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from negspace.errors import WeightsUnavailableError, arg

logger = logging.getLogger(__name__)

_MAX_REASON_CHARS = 160


def _load_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        OSError,  # missing/unreadable files; huggingface_hub and transformers hub failures
        EOFError,  # truncated torch pickle
        pickle.UnpicklingError,
        RuntimeError,  # torch: size mismatch, missing keys, bad zip archive
        ValueError,  # malformed JSON configs, bad tensors
        KeyError,
        AssertionError,  # open_clip checks checkpoint shapes with assert
    ]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors comes with transformers/open_clip
        pass
    return tuple(errors)


#: What loading a corrupt, mismatched or missing checkpoint raises. Programming errors
#: (TypeError, AttributeError, ...) are deliberately not in it, so they are not disguised.
LOAD_ERRORS = _load_errors()

# Exception type names (anywhere in the chain) that mean "could not reach the hub".
UNREACHABLE_ERRORS = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "TimeoutException",
    "URLError",
    "gaierror",
    "ProxyError",
}
NOT_ON_HUB_ERRORS = {
    "RepositoryNotFoundError",
    "GatedRepoError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "RemoteEntryNotFoundError",
}


def exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _hub_constants() -> Any | None:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip/transformers
        return None
    return constants


def _probe(url: str, timeout: float) -> bool:
    """Can a TCP connection to the hub be opened within ``timeout`` seconds?"""
    parts = urlsplit(url)
    if not parts.hostname:
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class HubAccess:
    """How the hub may be used for one load; ``reason`` says why not, if it may not."""

    reason: str | None = None


@contextmanager
def hub_access(timeout: float = 3.0) -> Iterator[HubAccess]:
    """Use the hub if it answers, else only its local cache, for the duration of the block.

    huggingface_hub retries an unreachable host for about 25 s per file, even when the file is
    already cached; a machine with no network would wait a minute before any load. A quick
    probe avoids that: when the hub cannot be reached, the block runs in hub offline mode, so
    cached files load at once and missing ones fail at once.
    """
    constants = _hub_constants()
    if constants is None:
        yield HubAccess()
        return
    if constants.HF_HUB_OFFLINE:
        yield HubAccess("offline mode is on (HF_HUB_OFFLINE)")
        return
    proxied = any(os.environ.get(v) for v in _PROXY_VARS)
    # Behind a proxy a direct connection proves nothing: let the clients try.
    if proxied or _probe(constants.ENDPOINT, timeout):
        yield HubAccess()
        return
    logger.info("The hub (%s) is unreachable; using only its local cache", constants.ENDPOINT)
    # A process-wide flag, restored on exit; loads are not run from several threads.
    constants.HF_HUB_OFFLINE = True
    try:
        yield HubAccess("the hub is unreachable")
    finally:
        constants.HF_HUB_OFFLINE = False


def short_reason(exc: BaseException) -> str:
    """An exception message on one line, trimmed to a readable length."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("Weights only load failed"):
        # torch's message is a page long; what it means for the user is this.
        return (
            "torch cannot load it as a plain state dict with weights_only=True: it is corrupt "
            "or a pickle holding more than tensors"
        )
    if len(text) > _MAX_REASON_CHARS:
        text = text[: _MAX_REASON_CHARS - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text.rstrip(".")


def hub_error(
    spec: str, exc: BaseException, access: HubAccess | None = None, source: str = ""
) -> WeightsUnavailableError:
    """The error for weights that had to come from the hub and did not; ``source`` says which
    file(s) to download and from where (:func:`openclip_source`, :func:`transformers_source`)."""
    logger.debug("Hub download for %s failed", spec, exc_info=exc)
    names = {type(e).__name__ for e in exception_chain(exc)}
    if access is not None and access.reason:
        reason = f"{access.reason}, they are not in the local hub cache and no local file was given"
    elif names & UNREACHABLE_ERRORS:
        reason = "the hub is unreachable and no local file was given"
    elif names & NOT_ON_HUB_ERRORS:
        reason = "the hub has no such model (or it is private) and no local file was given"
    else:
        reason = f"downloading them failed ({short_reason(exc)}) and no local file was given"
    where = source or "them"
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {reason}; download {where} elsewhere and pass {arg('weights')} PATH."
    )


HF_HUB = "https://huggingface.co/"


def openclip_source(hf_hub: str) -> str:
    """What to download for an open_clip pretrained tag whose config says ``hf_hub`` (open_clip's
    ``org/repo/`` or ``org/repo/file`` form): one checkpoint file and its address."""
    repo_id, file_name = (hf_hub.rstrip("/"), "") if hf_hub.endswith("/") else hf_hub.rsplit("/", 1)
    if file_name:
        return f"the file {file_name} of {HF_HUB}{repo_id}"
    return f"the file open_clip_model.safetensors (or open_clip_pytorch_model.bin) of {HF_HUB}{repo_id}"


def openclip_hub_repo_source(repo: str) -> str:
    """What to download for an ``openclip:hf-hub:REPO`` spec: the repository's folder."""
    return (
        f"the folder {HF_HUB}{repo} (open_clip_config.json and open_clip_model.safetensors; "
        f"e.g. huggingface-cli download {repo} --local-dir DIR)"
    )


def transformers_source(repo: str) -> str:
    """What to download for an ``hf:REPO`` spec: the model folder a transformers CLIP loads."""
    return (
        f"the folder {HF_HUB}{repo} (config.json, model.safetensors or pytorch_model.bin, and "
        f"the tokenizer and preprocessor files; e.g. huggingface-cli download {repo} --local-dir DIR)"
    )


def missing_path_error(spec: str, path: Path) -> WeightsUnavailableError:
    """The error for a ``--weights`` path that does not exist."""
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {path} does not exist; pass {arg('weights')} PATH "
        "pointing to the downloaded weights."
    )


def unreadable_weights_error(spec: str, path: Path, exc: BaseException) -> WeightsUnavailableError:
    """The error for local weights that exist but cannot be loaded into the model."""
    logger.debug("Loading %s for %s failed", path, spec, exc_info=exc)
    return WeightsUnavailableError(
        f"Could not load weights for {spec} from {path} ({short_reason(exc)}); pass {arg('weights')} "
        "PATH with an intact checkpoint that matches this model."
    )


def no_weights_error(spec: str, hint: str) -> WeightsUnavailableError:
    """The error for a spec that names no weights at all."""
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {hint}; give a pretrained tag or pass {arg('weights')} PATH."
    )


def folder_error(spec: str, folder: Path) -> WeightsUnavailableError:
    """The error for a ``--weights`` folder in which no checkpoint can be picked."""
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {folder} holds neither exactly one checkpoint file "
        f"nor the files the model needs; pass {arg('weights')} PATH naming the checkpoint."
    )


#: What a ``--weights`` file of an open_clip model must be.
STATE_DICT_EXPECTED = "a safetensors file or a PyTorch state dict saved with torch.save"
#: What ``--weights`` of a transformers (``hf:``) model must be.
HF_FOLDER_EXPECTED = (
    "a folder written by save_pretrained (config.json, model.safetensors or pytorch_model.bin, "
    "and the tokenizer and preprocessor files)"
)

_ZIP, _NUMPY = b"PK\x03\x04", b"\x93NUMPY"


def not_a_checkpoint_error(spec: str, path: Path, expected: str, reason: str) -> WeightsUnavailableError:
    """The error for a ``--weights`` path that is not a checkpoint of the model ``spec`` names."""
    return WeightsUnavailableError(
        f"{arg('weights')} {path} is not a checkpoint of {spec}: expected {expected} ({reason})."
    )


def check_state_dict_file(spec: str, given: Path, file: Path | None = None) -> None:
    """Refuse, before the model is built, a ``--weights`` file (``given``, or the checkpoint
    ``file`` found in that folder) that holds no state dict: text, random bytes, an empty file, a
    pickle of something else. open_clip would fail on those with an arbitrary exception (a
    ``StopIteration`` for an empty dict, ``AttributeError`` for a list or a tensor).

    Checked by the file's first bytes, then (for PyTorch files) by loading it memory-mapped,
    which reads no tensor data. NumPy files pass: open_clip reads them as big_vision weights.
    """
    file = file or given
    shown = "" if file == given else f"{file.name}: "
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(16)
    except OSError as err:
        raise not_a_checkpoint_error(spec, given, STATE_DICT_EXPECTED, f"{shown}{err.strerror}") from None
    reason = _not_a_state_dict(file, head, size)
    if reason:
        raise not_a_checkpoint_error(spec, given, STATE_DICT_EXPECTED, shown + reason)


def _not_a_state_dict(file: Path, head: bytes, size: int) -> str | None:
    """Why ``file`` is no state dict, or ``None`` when it may be one."""
    if size == 0:
        return "the file is empty"
    if head.startswith(_NUMPY) or (head.startswith(_ZIP) and file.suffix.lower() == ".npz"):
        return None
    if _safetensors_header_size(head, size):
        return _safetensors_problem(file, head)
    if head.startswith((_ZIP, b"\x80")):  # torch.save's zip format, or its older pickle one
        import torch

        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses
                warnings.simplefilter("ignore")
                content = torch.load(file, map_location="cpu", weights_only=True, mmap=head.startswith(_ZIP))
        except LOAD_ERRORS as err:
            return short_reason(err)
        return _state_dict_problem(content, torch.Tensor)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its first bytes are of no checkpoint format"
    return "it reads as text"


def _safetensors_header_size(head: bytes, size: int) -> int:
    """The JSON header's length when ``head`` starts a safetensors file (8-byte length, then ``{``)."""
    if len(head) < 9 or head[8:9] != b"{":
        return 0
    length = int.from_bytes(head[:8], "little")
    return length if 0 < length <= size - 8 else 0


def _safetensors_problem(file: Path, head: bytes) -> str | None:
    import json

    length = _safetensors_header_size(head, file.stat().st_size)
    try:
        with file.open("rb") as handle:
            handle.seek(8)
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as err:
        return f"its safetensors header cannot be read ({short_reason(err)})"
    tensors = [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []
    return None if tensors else "it holds no tensor"


def _state_dict_problem(content: Any, tensor_type: type) -> str | None:
    """Why what ``torch.load`` gave is not a state dict (a mapping of names to tensors), if it is not."""
    from collections.abc import Mapping

    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]  # a training checkpoint, as open_clip reads it
    if not isinstance(content, Mapping):
        return f"it holds a {type(content).__name__}, not a mapping of names to tensors"
    if not any(isinstance(v, tensor_type) for v in content.values()):
        return "it holds no tensor" if content else "it holds an empty mapping"
    return None
