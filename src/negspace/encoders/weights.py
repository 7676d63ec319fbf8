"""Turning weight-loading failures into one sentence a person can act on."""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from negspace.errors import WeightsUnavailableError

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
        f"Could not load weights for {spec}: {reason}; download {where} elsewhere and pass "
        "--weights PATH."
    )


HF_HUB = "https://huggingface.co/"


def openclip_source(hf_hub: str) -> str:
    """What to download for an open_clip pretrained tag whose config says ``hf_hub`` (open_clip's
    ``org/repo/`` or ``org/repo/file`` form): one checkpoint file and its address."""
    repo_id, file_name = (hf_hub.rstrip("/"), "") if hf_hub.endswith("/") else hf_hub.rsplit("/", 1)
    if file_name:
        return f"the file {file_name} of {HF_HUB}{repo_id}"
    return (f"the file open_clip_model.safetensors (or open_clip_pytorch_model.bin) of "
            f"{HF_HUB}{repo_id}")


def openclip_hub_repo_source(repo: str) -> str:
    """What to download for an ``openclip:hf-hub:REPO`` spec: the repository's folder."""
    return (f"the folder {HF_HUB}{repo} (open_clip_config.json and open_clip_model.safetensors; "
            f"e.g. huggingface-cli download {repo} --local-dir DIR)")


def transformers_source(repo: str) -> str:
    """What to download for an ``hf:REPO`` spec: the model folder a transformers CLIP loads."""
    return (f"the folder {HF_HUB}{repo} (config.json, model.safetensors or pytorch_model.bin, and "
            f"the tokenizer and preprocessor files; e.g. huggingface-cli download {repo} --local-dir DIR)")


def missing_path_error(spec: str, path: Path) -> WeightsUnavailableError:
    """The error for a ``--weights`` path that does not exist."""
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {path} does not exist; pass --weights PATH "
        "pointing to the downloaded weights."
    )


def unreadable_weights_error(spec: str, path: Path, exc: BaseException) -> WeightsUnavailableError:
    """The error for local weights that exist but cannot be loaded into the model."""
    logger.debug("Loading %s for %s failed", path, spec, exc_info=exc)
    return WeightsUnavailableError(
        f"Could not load weights for {spec} from {path} ({short_reason(exc)}); pass --weights "
        "PATH with an intact checkpoint that matches this model."
    )


def no_weights_error(spec: str, hint: str) -> WeightsUnavailableError:
    """The error for a spec that names no weights at all."""
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {hint}; give a pretrained tag or pass --weights PATH."
    )


def folder_error(spec: str, folder: Path) -> WeightsUnavailableError:
    """The error for a ``--weights`` folder in which no checkpoint can be picked."""
    return WeightsUnavailableError(
        f"Could not load weights for {spec}: {folder} holds neither exactly one checkpoint file "
        "nor the files the model needs; pass --weights PATH naming the checkpoint."
    )
