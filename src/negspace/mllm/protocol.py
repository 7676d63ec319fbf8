"""The small chat protocol every MLLM backend speaks.

A request is a list of messages whose content is text and image parts, plus generation
parameters; a backend answers a batch of requests with one string per request, or ``None`` for a
request that failed for good (after its retries). Failures are counted in :class:`MLLMStats`;
they never raise out of ``generate``, so a detector keeps working on the banks it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL.Image import Image


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image given as a file path or an in-memory PIL image."""

    image: Path | Image


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    role: str
    content: tuple[Part, ...]

    @classmethod
    def user(cls, *parts: Part | str) -> Message:
        """A user message; plain strings become text parts."""
        return cls("user", tuple(TextPart(p) if isinstance(p, str) else p for p in parts))


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: GenerationParams = field(default_factory=GenerationParams)

    @property
    def has_images(self) -> bool:
        return any(isinstance(p, ImagePart) for m in self.messages for p in m.content)


@dataclass
class MLLMStats:
    """What a run cost and what went wrong, for ``metrics.json``."""

    calls: int = 0  # requests actually sent to a model
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # requests answered with None
    rejected_answers: int = 0  # answers a parser could not use (counted by the caller)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@runtime_checkable
class MLLM(Protocol):
    """Anything that answers chat requests: an HTTP endpoint, a local model, a cache around one."""

    model_id: str
    stats: MLLMStats

    def generate(self, requests: Sequence[ChatRequest]) -> list[str | None]:
        """One answer per request, in order; ``None`` where a request failed for good."""
        ...


def describe_model(client: Any, sends_images: bool = True) -> dict[str, Any]:
    """What a results file records of an (M)LLM client: its backend, where it runs (an endpoint's
    scheme, host, port and path, never credentials; or a local model's name or folder), the model,
    and the image size only where images are sent (``sends_images=False`` for a text-only use
    such as NegRefine's filter). A client without ``describe`` is recorded by its ``model_id``."""
    describe = getattr(client, "describe", None)
    if callable(describe):
        return describe(sends_images)
    return {"model": getattr(client, "model_id", type(client).__name__)}
