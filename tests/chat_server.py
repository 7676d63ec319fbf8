"""A real OpenAI-compatible chat server on 127.0.0.1 for the tests: each test's server names a
model of its own, so the MLLM cache (keyed by the model) keeps tests apart."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_SERVERS = itertools.count()


@contextmanager
def chat_server(prefix: str, answer: Callable[[dict[str, Any]], str]) -> Iterator[Any]:
    """A started server whose ``/v1/chat/completions`` answers ``answer(payload)``; it has
    ``model`` (``prefix`` plus the xdist worker and a counter: the workers share one cache) and
    ``spec`` (what ``--mllm``/``--llm`` take)."""
    from pytest_httpserver import HTTPServer
    from werkzeug.wrappers import Response

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()

    def chat(request):
        body = {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer(json.loads(request.data))}}],
        }
        return Response(json.dumps(body), content_type="application/json")

    server.model = f"{prefix}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{next(_SERVERS)}"
    server.spec = f"openai:{server.url_for('/v1')}/{server.model}"
    server.expect_request("/v1/models").respond_with_json({"data": [{"id": server.model}]})
    server.expect_request("/v1/chat/completions", method="POST").respond_with_handler(chat)
    try:
        yield server
    finally:
        server.stop()
