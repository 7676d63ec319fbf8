"""Multimodal LLMs for ANTS: the chat protocol, the ANTS prompts and parsers, backends
(OpenAI-compatible HTTP servers, local transformers models) and a persistent response cache.

Backends import their heavy dependencies lazily; importing this package is cheap.
"""

from negspace.mllm.loading import SPEC_FORMS, MLLMPair, load_mllm
from negspace.mllm.prompts import (
    DESCRIBE_TEMPLATE,
    VSNL_TEMPLATE,
    describe_request,
    parse_class_list,
    parse_description,
    vsnl_request,
)
from negspace.mllm.protocol import (
    MLLM,
    ChatRequest,
    GenerationParams,
    ImagePart,
    Message,
    MLLMStats,
    TextPart,
)
from negspace.mllm.response_cache import CachedMLLM, cache_stats, clear_cache

__all__ = [
    "DESCRIBE_TEMPLATE",
    "MLLM",
    "SPEC_FORMS",
    "VSNL_TEMPLATE",
    "CachedMLLM",
    "ChatRequest",
    "GenerationParams",
    "ImagePart",
    "MLLMPair",
    "MLLMStats",
    "Message",
    "TextPart",
    "cache_stats",
    "clear_cache",
    "describe_request",
    "load_mllm",
    "parse_class_list",
    "parse_description",
    "vsnl_request",
]
