"""An MLLM backend for any OpenAI-compatible ``/v1/chat/completions`` server.

vLLM, Ollama, llama.cpp's ``llama-server``, LM Studio and hosted APIs all speak this format.
Standard library only: ``urllib.request`` for HTTP, a thread pool for concurrency.

* Images go inline as base64 ``data:image/jpeg`` URLs, downscaled so that the longest side is at
  most ``image_size`` pixels (default 448; never upscaled).
* Each request has a timeout and is retried with exponential backoff and (seeded) jitter on
  connection errors, timeouts, HTTP 408, 429 (waiting the server's ``Retry-After``), 5xx, and
  on a 200 answer whose body is not JSON; no wait is longer than ``max_retry_after`` (30 s,
  ``--mllm-max-wait``). A JSON answer with no message in it (no ``choices``) is an unusable
  answer, not a transport error: it is returned as ``""`` at once, for the caller's parser to
  reject. Any other 4xx fails at once.
  A request that fails for good gives ``None`` and is counted in ``stats.failures``;
  :meth:`generate` never raises for one request.
* :meth:`check` (called by :func:`negspace.mllm.loading.load_mllm`) makes sure the server answers
  and serves the model before a run starts, and otherwise raises a
  :class:`~negspace.errors.NegspaceError` with one sentence a person can act on.

Spec syntax (see :func:`parse_openai_spec`): ``openai:BASE_URL/MODEL``, e.g.
``openai:http://localhost:8000/v1/Qwen/Qwen2-VL-2B-Instruct`` (everything after the ``/v1``
path segment is the model, so names with ``/`` work), or ``openai:BASE_URL#MODEL`` for a base
URL without a ``/v1`` segment.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import io
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from negspace.errors import NegspaceError
from negspace.mllm.protocol import ChatRequest, ImagePart, MLLMStats, TextPart
from negspace.redact import redact_credentials

__all__ = ["OpenAIChatBackend", "encode_image_data_url", "parse_openai_spec"]

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying (besides connection errors, timeouts and malformed answers).
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504}) | frozenset(range(500, 600))


def parse_openai_spec(rest: str) -> tuple[str, str]:
    """Split what follows ``openai:`` into ``(base_url, model)``.

    * ``URL#MODEL``: explicit; the model is everything after ``#``.
    * ``.../v1/MODEL`` (any ``v<digits>`` path segment): the base URL ends at that segment and
      the model is the rest of the path, which may contain ``/`` (``Qwen/Qwen2-VL-2B-Instruct``).
    * otherwise: the model is the last path segment.

    Raises NegspaceError when no model or no http(s) URL can be read off the spec.
    """
    forms = (
        "give openai:BASE_URL/MODEL (e.g. openai:http://localhost:8000/v1/Qwen2-VL-2B-Instruct) "
        "or openai:BASE_URL#MODEL"
    )
    if "#" in rest:
        base, model = rest.split("#", 1)
        base = base.rstrip("/")
    else:
        parsed = urllib.parse.urlsplit(rest)
        segments = parsed.path.split("/")
        cut = next(
            (i for i, seg in enumerate(segments) if len(seg) >= 2 and seg[0] == "v" and seg[1:].isdigit()),
            None,
        )
        if cut is not None:  # ".../v1" alone names no model
            base_path = "/".join(segments[: cut + 1])
            model = "/".join(segments[cut + 1 :]).strip("/")
        else:
            base_path, _, model = parsed.path.rstrip("/").rpartition("/")
        base = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, base_path, "", "")).rstrip("/")
    parsed_base = urllib.parse.urlsplit(base)
    if parsed_base.scheme not in ("http", "https") or not parsed_base.netloc:
        raise NegspaceError(f"The MLLM spec {redact_credentials('openai:' + rest)} has no http(s) server URL; {forms}.")
    if not model.strip():
        raise NegspaceError(f"The MLLM spec {redact_credentials('openai:' + rest)} names no model; {forms}.")
    return base, model.strip()


def encode_image_data_url(image: Path | str | Image.Image, image_size: int = 448, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,...`` URL of the image, longest side at most ``image_size``.

    Files are opened with EXIF orientation applied; every mode becomes RGB (alpha over white).
    """
    if isinstance(image, (str, Path)):
        with Image.open(Path(image)) as im:
            im.load()
            img = ImageOps.exif_transpose(im) or im
            img = img.copy()
    else:
        img = image
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if max(img.size) > image_size:
        img = img.copy()
        img.thumbnail((image_size, image_size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; ``retry_after`` is the server's hint."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    """An attempt failed in a way that retrying will not fix."""


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` credentials (and secret query values) replaced by ``***``."""
    return redact_credentials(url)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIChatBackend:
    """Chat completions over HTTP; see the module docstring.

    Args:
        base_url: the server's API root, e.g. ``http://localhost:8000/v1``.
        model: the model name the server serves.
        api_key_env: environment variable holding the API key (optional for local servers).
        image_size: longest image side sent, in pixels.
        max_concurrency: requests in flight at once.
        timeout: seconds per HTTP attempt (connect and each read).
        retries: extra attempts after the first.
        backoff: first backoff in seconds; doubles each retry, capped at ``max_backoff``.
        jitter: the backoff is multiplied by a factor drawn in ``[1, 1 + jitter]``.
        max_retry_after: longest wait between attempts, in seconds (a longer ``Retry-After`` is cut).
        seed: seeds the jitter.
        send_seed: send ``seed`` in the payload (most servers accept it).
        sleep: the sleep function (tests inject a recorder).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        image_size: int = 448,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        jitter: float = 0.5,
        max_retry_after: float = 30.0,
        seed: int = 0,
        send_seed: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if image_size < 1 or max_concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("image_size and max_concurrency must be >= 1, retries >= 0, timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # what messages print: never a password
        self.option = "--mllm"  # the option that named this server, for the messages
        self.model = model
        self.api_key_env = api_key_env
        self.image_size = int(image_size)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.jitter = float(jitter)
        self.max_retry_after = float(max_retry_after)
        self.send_seed = send_seed
        self.sleep = sleep
        self.stats = MLLMStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._set_identity(self.model)

    def _set_identity(self, served_name: str) -> None:
        # The cache identity is the model as the server names it, not the URL that reached it
        # (localhost and 127.0.0.1 serve the same answers); the answer depends on the pixels
        # sent, so the image size is part of it.
        self.model_id = f"openai:{served_name}?image_size={self.image_size}"
        self.served_name = served_name

    def describe(self, sends_images: bool = True) -> dict[str, Any]:
        """The endpoint (scheme, host, port and path: no user, password or query) and the model
        it serves; the image size only where images are sent (see ``describe_model``)."""
        parts = urllib.parse.urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        described: dict[str, Any] = {
            "backend": "openai",
            "endpoint": f"{parts.scheme}://{netloc}{parts.path}",
            "model": self.served_name,
        }
        if sends_images:
            described["image_size"] = self.image_size
        return described

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(base_url={self.shown_url!r}, model={self.model!r})"

    # -- HTTP ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _http(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes, Any]:
        """One HTTP exchange; returns (status, body, headers), raising only for no answer."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self._headers())
        try:
            with urllib.request.urlopen(
                req, timeout=self.timeout
            ) as resp:  # the URL is the --mllm endpoint the user gave
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            try:
                payload = err.read()
            except Exception:  # noqa: BLE001 - the body only adds detail; the status code is the answer
                payload = b""
            return err.code, payload, err.headers

    def _attempt(self, payload: dict[str, Any]) -> str:
        try:
            status, body, headers = self._http("POST", "/chat/completions", payload)
        except TimeoutError as err:
            raise _Retryable(f"timed out after {self.timeout:g} s") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.timeout:g} s") from err
            raise _Retryable(f"connection failed ({reason})") from err
        if status in RETRY_STATUSES:
            hint = _retry_after_seconds(headers.get("Retry-After") if headers is not None else None)
            raise _Retryable(f"HTTP {status}", retry_after=hint)
        if status != 200:
            snippet = body[:200].decode("utf-8", errors="replace")
            raise _Fatal(f"HTTP {status}: {snippet}")
        try:
            answer = json.loads(body.decode("utf-8", errors="replace"))
        except ValueError as err:  # not JSON at all: a proxy's error page, a cut connection
            raise _Retryable(f"malformed answer ({type(err).__name__}: {err})") from err
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            # The server answered, with nothing usable in it (e.g. no choices): asking again gives
            # the same; the caller's parser rejects the empty text and counts it.
            logger.warning("MLLM server %s answered without a message (%s)", self.shown_url, body[:120])
            return ""
        if content is None:
            return ""
        if isinstance(content, list):  # some servers answer with content parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            logger.warning("MLLM server %s answered a %s, not text", self.shown_url, type(content).__name__)
            return ""
        return content

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        with self._lock:
            factor = 1.0 + self.jitter * self._rng.random()
        delay = base * factor
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_retry_after)  # no wait is ever longer than the cap

    # -- requests -----------------------------------------------------------------------------

    def build_payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one chat-completions call (images as JPEG data URLs)."""
        messages = []
        for msg in request.messages:
            if all(isinstance(p, TextPart) for p in msg.content):
                # plain string content: accepted by text-only servers too
                content: Any = "".join(p.text for p in msg.content if isinstance(p, TextPart))
            else:
                content = []
                for part in msg.content:
                    if isinstance(part, ImagePart):
                        url = encode_image_data_url(part.image, self.image_size)
                        content.append({"type": "image_url", "image_url": {"url": url}})
                    else:
                        content.append({"type": "text", "text": part.text})
            messages.append({"role": msg.role, "content": content})
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.params.max_tokens,
            "temperature": request.params.temperature,
        }
        if self.send_seed:
            payload["seed"] = request.params.seed
        return payload

    def _one(self, request: ChatRequest) -> str | None:
        try:
            payload = self.build_payload(request)
        except Exception as err:  # noqa: BLE001  (an unreadable image fails this request only)
            logger.warning("MLLM request skipped: its image cannot be read (%s)", err)
            with self._lock:
                self.stats.failures += 1
            return None
        with self._lock:
            self.stats.calls += 1
        for attempt in range(self.retries + 1):
            try:
                return self._attempt(payload)
            except _Fatal as err:
                logger.warning("MLLM request to %s failed: %s", self.shown_url, err)
                break
            except _Retryable as err:
                if attempt >= self.retries:
                    logger.warning("MLLM request to %s failed after %d attempts: %s", self.shown_url, attempt + 1, err)
                    break
                delay = self._delay(attempt, err.retry_after)
                logger.info("MLLM request %s; retrying in %.2f s", err, delay)
                with self._lock:
                    self.stats.retries += 1
                self.sleep(delay)
        with self._lock:
            self.stats.failures += 1
        return None

    def generate(self, requests: Sequence[ChatRequest]) -> list[str | None]:
        """Answer the requests concurrently (``max_concurrency`` at once), in order."""
        return self.generate_each(requests)

    def generate_each(
        self, requests: Sequence[ChatRequest], on_answer: Callable[[int, str | None], None] | None = None
    ) -> list[str | None]:
        """:meth:`generate`, handing each answer to ``on_answer(index, answer)`` (on the calling
        thread) as soon as it arrives, so a caller can keep it even if the run is interrupted."""
        requests = list(requests)
        answers: list[str | None] = [None] * len(requests)

        def arrived(index: int, answer: str | None) -> None:
            answers[index] = answer
            if on_answer is not None:
                on_answer(index, answer)

        if len(requests) <= 1 or self.max_concurrency == 1:
            for index, request in enumerate(requests):
                arrived(index, self._one(request))
            return answers
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests)))
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                arrived(futures[future], future.result())
        finally:  # on Ctrl-C: stop at once, send nothing more
            pool.shutdown(wait=False, cancel_futures=True)
        return answers

    # -- start-up check -----------------------------------------------------------------------

    def served_models(self) -> list[str] | None:
        """The model ids ``GET /models`` lists, or None when the server has no such route."""
        status, body, _ = self._http("GET", "/models", None)
        if status in (404, 405):
            return None
        if status in (401, 403):
            raise NegspaceError(
                f"The MLLM server at {self.shown_url} refused the API key (HTTP {status}); "
                f"set it in the environment variable {self.api_key_env}."
            )
        if status != 200:
            raise NegspaceError(f"The MLLM server at {self.shown_url} answered GET /models with HTTP {status}.")
        try:
            data = json.loads(body.decode("utf-8", errors="replace"))
            return [str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
        except (ValueError, AttributeError, TypeError):
            return None

    def _probe_chat(self) -> tuple[int, str]:
        payload = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        status, body, _ = self._http("POST", "/chat/completions", payload)
        return status, body[:200].decode("utf-8", errors="replace")

    def check(self) -> None:
        """Raise NegspaceError (one sentence) unless the server answers and serves the model."""
        try:
            served = self.served_models()
            if served is not None:
                name = next((n for n in (self.model, f"{self.model}:latest") if n in served), None)  # Ollama tags
                if name is not None:
                    self._set_identity(name)
                    return
                if served:
                    raise NegspaceError(
                        f"The MLLM server at {self.shown_url} does not serve the model {self.model!r} "
                        f"(it serves: {', '.join(served)}); give one of those in {self.option}."
                    )
            status, text = self._probe_chat()
        except NegspaceError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            port = urllib.parse.urlsplit(self.base_url).port or 8000
            raise NegspaceError(
                f"No MLLM server answers at {self.shown_url} ({reason}); start one on that port (e.g. "
                f"`vllm serve {self.model} --port {port}`, see 'Using an MLLM' in the README) or fix the "
                f"URL in {self.option}."
            ) from None
        if status == 200:
            return  # e.g. llama.cpp answers whatever the model name, or /models is missing
        if status in (401, 403):
            raise NegspaceError(
                f"The MLLM server at {self.shown_url} refused the API key (HTTP {status}); "
                f"set it in the environment variable {self.api_key_env}."
            )
        raise NegspaceError(
            f"The MLLM server at {self.shown_url} cannot answer chats with the model "
            f"{self.model!r} (HTTP {status}: {text.strip()})."
        )
