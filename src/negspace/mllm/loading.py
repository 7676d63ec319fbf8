"""Build an MLLM from a spec string: ``openai:...`` or ``hf:...``, cached, optionally paired.

Spec forms:

* ``openai:BASE_URL/MODEL``, e.g. ``openai:http://localhost:8000/v1/Qwen/Qwen2-VL-2B-Instruct``:
  the base URL ends at its ``/v1`` (any ``/v<digits>``) path segment and everything after it is
  the model name, ``/`` included; ``openai:BASE_URL#MODEL`` names the model explicitly (for
  base URLs without a ``/v1`` segment, or a model name that itself looks like ``v2``).
* ``hf:NAME_OR_PATH``: a local transformers vision-language model (hub id or folder).

``text_spec`` gives a second model for requests without images (the VSNL prompts); both are
wrapped in the response cache, each under its own model id, and routed by :class:`MLLMPair`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from negspace.cache import default_cache_dir
from negspace.errors import NegspaceError
from negspace.mllm.protocol import MLLM, ChatRequest, MLLMStats, describe_model
from negspace.mllm.response_cache import MLLM_DB, CachedMLLM
from negspace.redact import redact_credentials

__all__ = ["SPEC_FORMS", "MLLMPair", "load_mllm"]

SPEC_FORMS = (
    "openai:BASE_URL/MODEL (e.g. openai:http://localhost:8000/v1/Qwen2-VL-2B-Instruct), "
    "openai:BASE_URL#MODEL, or hf:NAME_OR_PATH (e.g. hf:Qwen/Qwen2-VL-2B-Instruct or hf:/path/to/model)"
)


class MLLMPair:
    """Routes requests with images to ``vision`` and text-only requests to ``text``.

    ``stats`` sums what both backends did during this object's :meth:`generate` calls
    (``rejected_answers`` is left to the caller).
    """

    def __init__(self, vision: MLLM, text: MLLM) -> None:
        self.vision = vision
        self.text = text
        self.model_id = f"{vision.model_id}+text:{text.model_id}"
        self.stats = MLLMStats()

    def __repr__(self) -> str:
        return f"MLLMPair(vision={self.vision!r}, text={self.text!r})"

    def describe(self, sends_images: bool = True) -> dict[str, Any]:
        """Both backends (see ``describe_model``); text-only use records the text backend alone."""
        text = describe_model(self.text, sends_images=False)
        return {"vision": describe_model(self.vision), "text": text} if sends_images else text

    def check(self) -> None:
        for backend in (self.vision, self.text):
            check = getattr(backend, "check", None)
            if callable(check):
                check()

    def generate(self, requests: Sequence[ChatRequest]) -> list[str | None]:
        requests = list(requests)
        answers: list[str | None] = [None] * len(requests)
        for backend, want_images in ((self.vision, True), (self.text, False)):
            idx = [i for i, r in enumerate(requests) if r.has_images == want_images]
            if not idx:
                continue
            before = backend.stats.as_dict()
            results = backend.generate([requests[i] for i in idx])
            after = backend.stats.as_dict()
            for name in ("calls", "cache_hits", "retries", "failures"):
                setattr(self.stats, name, getattr(self.stats, name) + after[name] - before[name])
            for i, ans in zip(idx, results, strict=False):
                answers[i] = ans
        return answers


def _load_one(
    spec: str,
    *,
    image_size: int,
    max_concurrency: int,
    timeout: float,
    retries: int,
    max_wait: float,
    api_key_env: str,
    device: str,
    batch_size: int,
    check: bool,
    option: str = "--mllm",
) -> MLLM:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest.strip():
        raise NegspaceError(f"The MLLM spec {redact_credentials(spec)!r} is not understood; give {SPEC_FORMS}.")
    kind = kind.strip().lower()
    if kind == "openai":
        from negspace.mllm.openai_backend import OpenAIChatBackend, parse_openai_spec

        base_url, model = parse_openai_spec(rest.strip())
        backend = OpenAIChatBackend(
            base_url,
            model,
            api_key_env=api_key_env,
            image_size=image_size,
            max_concurrency=max_concurrency,
            timeout=timeout,
            retries=retries,
            max_retry_after=max_wait,
        )
        backend.option = option
        if check:
            backend.check()
        return backend
    if kind == "hf":
        from negspace.mllm.hf_backend import HFVisionChatBackend

        return HFVisionChatBackend(rest.strip(), device=device, batch_size=batch_size, image_size=image_size)
    raise NegspaceError(f"The MLLM spec {redact_credentials(spec)!r} has an unknown kind {kind!r}; give {SPEC_FORMS}.")


def load_mllm(
    spec: str,
    *,
    text_spec: str | None = None,
    cache: bool = True,
    cache_dir: Path | str | None = None,
    image_size: int = 448,
    max_concurrency: int = 8,
    timeout: float = 60.0,
    retries: int = 4,
    max_wait: float = 30.0,
    api_key_env: str = "OPENAI_API_KEY",
    device: str = "auto",
    batch_size: int = 8,
    check: bool = True,
) -> MLLM:
    """Load the MLLM named by ``spec`` (see the module docstring for the forms).

    Args:
        spec: the vision model (answers requests with images, and text-only ones unless
            ``text_spec`` is given).
        text_spec: optional model for text-only requests (the VSNL prompts).
        cache: wrap each backend in the persistent response cache.
        cache_dir: cache folder (default :func:`negspace.cache.default_cache_dir`); the file is
            ``mllm.sqlite3`` inside it.
        image_size: longest image side sent to the model, in pixels.
        max_concurrency: ``openai:``: requests in flight at once.
        timeout: ``openai:``: seconds per request.
        retries: ``openai:``: retries of a failed request.
        max_wait: ``openai:``: caps every wait between attempts (a server's ``Retry-After``
            included), in seconds.
        api_key_env: ``openai:``: the environment variable holding the API key.
        device: ``hf:``: where the model runs.
        batch_size: ``hf:``: requests per forward pass.
        check: run the server start-up check (``openai:``), raising NegspaceError if it fails.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise NegspaceError(f"No MLLM was given; give {SPEC_FORMS}.")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def build(s: str, option: str) -> MLLM:
        backend = _load_one(
            s.strip(),
            option=option,
            image_size=image_size,
            max_concurrency=max_concurrency,
            timeout=timeout,
            retries=retries,
            max_wait=max_wait,
            api_key_env=api_key_env,
            device=device,
            batch_size=batch_size,
            check=check,
        )
        return CachedMLLM(backend, folder / MLLM_DB) if cache else backend

    vision = build(spec, "--mllm")
    if text_spec is None or text_spec.strip() == spec.strip():
        return vision
    return MLLMPair(vision, build(text_spec, "--mllm-text"))
