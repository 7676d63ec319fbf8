"""The openai: backend against a real HTTP server on 127.0.0.1 (pytest-httpserver)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Response

from local_network import closed_port
from negspace.errors import NegspaceError
from negspace.mllm.loading import MLLMPair, load_mllm
from negspace.mllm.openai_backend import (
    OpenAIChatBackend,
    encode_image_data_url,
    parse_openai_spec,
)
from negspace.mllm.prompts import describe_request, vsnl_request
from negspace.mllm.protocol import ChatRequest, GenerationParams, Message
from negspace.mllm.response_cache import CachedMLLM

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def _threaded_server():
    # threaded: a slow handler must not hold up the next request; one server per module because
    # stopping a werkzeug server takes half a second
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(_threaded_server):
    _threaded_server.clear()
    yield _threaded_server
    _threaded_server.clear()


def completion(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


def last_text(payload: dict) -> str:
    content = payload["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return [p["text"] for p in content if p["type"] == "text"][-1]


def echo(request):
    return Response(json.dumps(completion("echo: " + last_text(request.get_json()))), content_type="application/json")


class Sleeps:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def backend(srv: HTTPServer, **kw) -> OpenAIChatBackend:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("timeout", 5.0)
    return OpenAIChatBackend(srv.url_for("/v1"), "tiny-vl", **kw)


def text_req(text: str) -> ChatRequest:
    return ChatRequest((Message.user(text),), GenerationParams(max_tokens=8))


def chat_posts(srv: HTTPServer) -> int:
    return sum(1 for req, _ in srv.log if req.path == CHAT)


# -- spec parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "base", "model"),
    [
        ("http://localhost:8000/v1/Qwen2-VL-2B-Instruct", "http://localhost:8000/v1", "Qwen2-VL-2B-Instruct"),
        ("http://localhost:8000/v1/Qwen/Qwen2-VL-2B-Instruct", "http://localhost:8000/v1", "Qwen/Qwen2-VL-2B-Instruct"),
        ("http://localhost:11434/v1/llava:7b", "http://localhost:11434/v1", "llava:7b"),
        ("https://api.example.com/openai/v1/gpt-4o-mini", "https://api.example.com/openai/v1", "gpt-4o-mini"),
        ("http://host:9000/api#org/model-v1", "http://host:9000/api", "org/model-v1"),
        ("http://host:9000/v1/#Qwen/Qwen2-VL-2B-Instruct", "http://host:9000/v1", "Qwen/Qwen2-VL-2B-Instruct"),
        ("http://host:9000/serve/mymodel", "http://host:9000/serve", "mymodel"),
    ],
)
def test_parse_openai_spec(rest, base, model):
    assert parse_openai_spec(rest) == (base, model)


@pytest.mark.parametrize(
    "spec", ["", "openai:", "openai:http://localhost:8000/v1", "openai:localhost/v1/m", "gpt:http://x/v1/m", "Qwen2-VL"]
)
def test_bad_specs_name_the_forms(spec):
    with pytest.raises(NegspaceError, match="openai:BASE_URL"):
        load_mllm(spec, cache=False, check=False)


# -- answers, retries, failures -------------------------------------------------------------------


def test_normal_answers_in_order_and_concurrent(server):
    in_flight, peak, lock, full = [0], [0], threading.Lock(), threading.Event()

    def handler(request):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            if in_flight[0] == 4:
                full.set()
        # the first requests wait until four are in flight at once (a client sending one at a
        # time leaves them waiting the 10 s and the peak at 1), then everything answers at once
        full.wait(timeout=10)
        with lock:
            in_flight[0] -= 1
        return echo(request)

    server.expect_request(CHAT, method="POST").respond_with_handler(handler)
    b = backend(server, max_concurrency=4, timeout=30.0)
    answers = b.generate([text_req(f"q{i}") for i in range(12)])
    assert answers == [f"echo: q{i}" for i in range(12)]
    assert peak[0] == 4  # max_concurrency requests at once, never more
    assert b.stats.calls == 12 and b.stats.failures == 0 and b.stats.retries == 0


def test_500_then_success(server):
    server.expect_oneshot_request(CHAT, method="POST").respond_with_data("boom", status=500)
    server.expect_request(CHAT, method="POST").respond_with_handler(echo)
    sleeps = Sleeps()
    b = backend(server, sleep=sleeps, backoff=0.5, jitter=0.5)
    assert b.generate([text_req("hi")]) == ["echo: hi"]
    assert b.stats.retries == 1 and b.stats.failures == 0 and b.stats.calls == 1
    assert len(sleeps.calls) == 1 and 0.5 <= sleeps.calls[0] <= 0.75  # backoff * [1, 1 + jitter]
    assert chat_posts(server) == 2


def test_429_honours_retry_after(server):
    server.expect_oneshot_request(CHAT, method="POST").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7"}
    )
    server.expect_request(CHAT, method="POST").respond_with_handler(echo)
    sleeps = Sleeps()
    b = backend(server, sleep=sleeps, backoff=0.1)
    assert b.generate([text_req("hi")]) == ["echo: hi"]
    assert sleeps.calls and sleeps.calls[0] >= 7.0
    assert b.stats.retries == 1


def test_waits_are_capped_even_when_the_server_asks_for_more(server):
    server.expect_oneshot_request(CHAT, method="POST").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "100"}
    )
    server.expect_request(CHAT, method="POST").respond_with_handler(echo)
    sleeps = Sleeps()
    b = backend(server, sleep=sleeps, backoff=0.1, max_retry_after=5.0)
    assert b.generate([text_req("hi")]) == ["echo: hi"]
    assert sleeps.calls == [5.0]
    assert OpenAIChatBackend(server.url_for("/v1"), "m").max_retry_after == 30.0  # --mllm-max-wait's default


def test_an_answer_without_choices_is_not_retried(server):
    server.expect_request(CHAT, method="POST").respond_with_json(
        {"id": "x", "object": "chat.completion", "choices": []}
    )
    sleeps = Sleeps()
    b = backend(server, sleep=sleeps, retries=4)
    assert b.generate([text_req("hi")]) == [""]  # usable by nobody: the caller's parser rejects it
    assert chat_posts(server) == 1 and sleeps.calls == [] and b.stats.retries == 0


def test_backoff_is_exponential_and_seeded(server):
    server.expect_request(CHAT, method="POST").respond_with_data("down", status=503)
    runs = []
    for _ in range(2):
        sleeps = Sleeps()
        b = backend(server, sleep=sleeps, retries=3, backoff=1.0, jitter=0.25, seed=3)
        assert b.generate([text_req("x")]) == [None]
        runs.append(sleeps.calls)
        assert b.stats.failures == 1 and b.stats.retries == 3
    assert runs[0] == runs[1]
    for attempt, delay in enumerate(runs[0]):
        assert 2**attempt <= delay <= 1.25 * 2**attempt


class Slow:
    """A handler that answers after ``delay`` seconds, unless released earlier; ``finish``
    releases it and waits until the server has logged every request it held (the server logs a
    request after its handler returns: a late entry would leak into the next test's count)."""

    def __init__(self, delay: float):
        self.delay = delay
        self.release = threading.Event()
        self.held: list = []
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:
            self.held.append(request)
        self.release.wait(self.delay)
        return echo(request)

    def finish(self, srv: HTTPServer) -> None:
        self.release.set()
        deadline = time.monotonic() + 30
        while not self._all_logged(srv):
            assert time.monotonic() < deadline, "the server never logged the requests it held"
            time.sleep(0.01)

    def _all_logged(self, srv: HTTPServer) -> bool:
        logged = {id(request) for request, _ in list(srv.log)}
        with self.lock:
            return all(id(request) in logged for request in self.held)


def test_slower_than_timeout_is_retried_then_fails(server):
    # The server holds every answer until the test ends: only the client's timeout can end the
    # call, so [None] (not an echo, which would come after 60 s) shows the timeout was applied.
    slow = Slow(60)
    server.expect_request(CHAT, method="POST").respond_with_handler(slow)
    b = backend(server, timeout=1.0, retries=1)
    try:
        assert b.generate([text_req("hi")]) == [None]
        assert b.stats.retries == 1 and b.stats.failures == 1
    finally:
        slow.finish(server)


def test_timeout_then_success(server):
    slow = Slow(60)  # held until the test ends: the first attempt can only time out
    server.expect_oneshot_request(CHAT, method="POST").respond_with_handler(slow)
    server.expect_request(CHAT, method="POST").respond_with_handler(echo)
    b = backend(server, timeout=1.0, retries=2)
    try:
        assert b.generate([text_req("hi")]) == ["echo: hi"]
        assert b.stats.retries == 1 and b.stats.failures == 0
    finally:
        slow.finish(server)


def test_a_body_that_is_not_json_is_retried_then_none(server):
    server.expect_request(CHAT, method="POST").respond_with_data("not json at all", content_type="application/json")
    b = backend(server, retries=2)
    assert b.generate([text_req("hi")]) == [None]
    assert b.stats.retries == 2 and b.stats.failures == 1
    assert chat_posts(server) == 3


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"choices": []}),
        json.dumps({"object": "error"}),
        json.dumps({"choices": [{"message": {"content": 42}}]}),
    ],
)
def test_a_json_answer_without_a_message_is_unusable_not_retried(server, body):
    server.expect_request(CHAT, method="POST").respond_with_data(body, content_type="application/json")
    b = backend(server, retries=2)
    assert b.generate([text_req("hi")]) == [""]
    assert b.stats.retries == 0 and b.stats.failures == 0
    assert chat_posts(server) == 1


def test_other_4xx_fails_at_once(server):
    server.expect_request(CHAT, method="POST").respond_with_data("bad request", status=400)
    b = backend(server, retries=3)
    assert b.generate([text_req("hi"), text_req("ho")]) == [None, None]
    assert b.stats.retries == 0 and b.stats.failures == 2
    assert chat_posts(server) == 2


def test_empty_content_and_content_parts(server):
    server.expect_oneshot_request(CHAT, method="POST").respond_with_json({"choices": [{"message": {"content": None}}]})
    server.expect_oneshot_request(CHAT, method="POST").respond_with_json(
        {"choices": [{"message": {"content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}}]}
    )
    b = backend(server, max_concurrency=1)
    assert b.generate([text_req("1"), text_req("2")]) == ["", "a b"]


def test_server_down():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    sleeps = Sleeps()
    b = OpenAIChatBackend(url, "m", retries=2, sleep=sleeps, timeout=1.0)
    assert b.generate([text_req("hi")]) == [None]
    assert b.stats.retries == 2 and b.stats.failures == 1 and len(sleeps.calls) == 2
    with pytest.raises(NegspaceError, match=r"No MLLM server answers at http://127\.0\.0\.1:\d+/v1.*vllm serve"):
        b.check()
    with pytest.raises(NegspaceError, match="No MLLM server answers"):
        load_mllm(f"openai:{url}/m", cache=False)


# -- payload --------------------------------------------------------------------------------------


def test_payload_carries_image_as_data_url_and_model(server, tmp_path):
    seen = []

    def handler(request):
        seen.append(request.get_json())
        return Response(json.dumps(completion("A red square on black")), content_type="application/json")

    server.expect_request(CHAT, method="POST").respond_with_handler(handler)
    img_path = tmp_path / "big.png"
    Image.new("RGBA", (900, 300), (255, 0, 0, 128)).save(img_path)
    mllm = load_mllm(
        f"openai:{server.url_for('/v1')}/Qwen/Qwen2-VL-2B-Instruct", cache=False, check=False, image_size=256
    )
    params = GenerationParams(max_tokens=20, temperature=0.0, seed=5)
    assert mllm.generate([describe_request(img_path, "goldfish", params)]) == ["A red square on black"]
    (payload,) = seen
    assert payload["model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert payload["max_tokens"] == 20 and payload["temperature"] == 0.0 and payload["seed"] == 5
    (msg,) = payload["messages"]
    assert msg["role"] == "user"
    image_part, text_part = msg["content"]
    assert text_part == {
        "type": "text",
        "text": "Describe this image in fewer than eight words. Do not include the class name goldfish.",
    }
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "JPEG" and decoded.mode == "RGB"
    assert max(decoded.size) <= 256 and decoded.size == (256, 85)


def test_text_only_request_sends_plain_string(server):
    seen = []
    server.expect_request(CHAT, method="POST").respond_with_handler(lambda r: (seen.append(r.get_json()), echo(r))[1])
    b = backend(server)
    b.generate([vsnl_request("husky")])
    assert isinstance(seen[0]["messages"][0]["content"], str)


def test_small_images_are_not_upscaled():
    url = encode_image_data_url(Image.new("L", (40, 20)), image_size=448)
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (40, 20) and img.mode == "RGB"


def test_unreadable_image_fails_that_request_only(server, tmp_path):
    server.expect_request(CHAT, method="POST").respond_with_handler(echo)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    b = backend(server)
    out = b.generate([describe_request(bad, "cat"), text_req("ok")])
    assert out == [None, "echo: ok"] and b.stats.failures == 1


def test_api_key_from_env(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sekret")
    server.expect_request(CHAT, method="POST", headers={"Authorization": "Bearer sekret"}).respond_with_handler(echo)
    b = backend(server, api_key_env="MY_KEY")
    assert b.generate([text_req("hi")]) == ["echo: hi"]


# -- start-up check -------------------------------------------------------------------------------


def test_check_model_listed(server):
    server.expect_request("/v1/models").respond_with_json({"data": [{"id": "tiny-vl"}, {"id": "other"}]})
    backend(server).check()
    assert chat_posts(server) == 0


def test_check_ollama_latest_tag(server):
    server.expect_request("/v1/models").respond_with_json({"data": [{"id": "llava:latest"}]})
    llava = OpenAIChatBackend(server.url_for("/v1"), "llava")
    llava.check()
    assert llava.model_id.startswith("openai:llava:latest?")  # the name the server gives it


def test_a_listed_model_list_without_the_model_stops_even_if_chats_would_answer(server):
    server.expect_request("/v1/models").respond_with_json({"data": [{"id": "tiny-vl"}]})
    server.expect_request(CHAT, method="POST").respond_with_handler(echo)  # a proxy that answers any name
    with pytest.raises(NegspaceError, match=r"does not serve the model 'gpt-4o' \(it serves: tiny-vl\)"):
        OpenAIChatBackend(server.url_for("/v1"), "gpt-4o").check()
    assert chat_posts(server) == 0


def test_the_cache_identity_does_not_depend_on_the_url(server):
    """localhost and 127.0.0.1 reach the same model: the same cache entries (the cache is keyed by model)."""
    port = server.port
    a = OpenAIChatBackend(f"http://localhost:{port}/v1", "tiny-vl")
    b = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "tiny-vl")
    assert a.model_id == b.model_id
    assert OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "tiny-vl", image_size=224).model_id != b.model_id


def test_check_model_not_served_lists_models(server):
    server.expect_request("/v1/models").respond_with_json({"data": [{"id": "a-model"}, {"id": "b-model"}]})
    server.expect_request(CHAT, method="POST").respond_with_data("model not found", status=404)
    with pytest.raises(NegspaceError, match=r"does not serve the model 'tiny-vl' \(it serves: a-model, b-model\)"):
        backend(server).check()


def test_check_falls_back_to_one_token_chat(server):
    seen = []
    server.expect_request("/v1/models").respond_with_data("no such route", status=404)
    server.expect_request(CHAT, method="POST").respond_with_handler(lambda r: (seen.append(r.get_json()), echo(r))[1])
    backend(server).check()
    assert seen[0]["max_tokens"] == 1


def test_check_bad_key(server):
    server.expect_request("/v1/models").respond_with_data("no", status=401)
    with pytest.raises(NegspaceError, match="OPENAI_API_KEY"):
        backend(server).check()


# -- routing to a text-only model -----------------------------------------------------------------


def test_text_spec_routes_text_only_requests(server, tmp_path):
    seen = []

    def handler(request):
        payload = request.get_json()
        seen.append(payload["model"])
        return Response(json.dumps(completion(payload["model"])), content_type="application/json")

    server.expect_request(CHAT, method="POST").respond_with_handler(handler)
    img = Image.new("RGB", (8, 8))
    base = server.url_for("/v1")
    mllm = load_mllm(f"openai:{base}/vision-m", text_spec=f"openai:{base}/text-m", check=False, cache_dir=tmp_path)
    assert isinstance(mllm, MLLMPair)
    out = mllm.generate([describe_request(img, "cat"), vsnl_request("cat"), vsnl_request("dog")])
    assert out == ["vision-m", "text-m", "text-m"]
    assert mllm.stats.calls == 3
    again = mllm.generate([describe_request(img, "cat"), vsnl_request("dog")])
    assert again == ["vision-m", "text-m"] and mllm.stats.cache_hits == 2 and len(seen) == 3
    assert isinstance(mllm.vision, CachedMLLM) and isinstance(mllm.text, CachedMLLM)


def test_credentials_never_appear_in_messages(server):
    from negspace.mllm.openai_backend import redact_url

    assert redact_url("http://user:s3cret@host:8000/v1") == "http://***@host:8000/v1"
    dead = OpenAIChatBackend("http://user:s3cret@127.0.0.1:9/v1", "m", timeout=2, retries=0)
    dead.option = "--mllm-text"
    with pytest.raises(NegspaceError) as err:
        dead.check()
    assert "s3cret" not in str(err.value) and "s3cret" not in repr(dead)
    assert "--mllm-text" in str(err.value) and "--port 9" in str(err.value)


def test_a_results_file_records_the_endpoint_and_model_never_credentials(tmp_path):
    from negspace.mllm.protocol import describe_model

    backend = OpenAIChatBackend("https://alice:s3cret@vlm.example.org:8443/v1?api_key=k3y", "Qwen2-VL", image_size=336)
    described = describe_model(backend)
    assert described == {
        "backend": "openai",
        "endpoint": "https://vlm.example.org:8443/v1",
        "model": "Qwen2-VL",
        "image_size": 336,
    }
    assert "image_size" not in describe_model(backend, sends_images=False)  # a text-only use sends no image
    # the cache and a vision/text pair describe what they wrap
    text = OpenAIChatBackend("http://[::1]:9000/v1", "text-llm")
    pair = MLLMPair(backend, text)
    assert describe_model(pair) == {
        "vision": described,
        "text": {"backend": "openai", "endpoint": "http://[::1]:9000/v1", "model": "text-llm"},
    }
    assert describe_model(pair, sends_images=False) == describe_model(text, sends_images=False)
    assert describe_model(CachedMLLM(backend, tmp_path / "cache.db")) == described
    assert "s3cret" not in json.dumps(described) and "k3y" not in json.dumps(described)
