"""The persistent MLLM response cache: keys, failures, two processes, restarts, CLI helpers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Response

from negspace.cache import FeatureStore
from negspace.errors import NegspaceError
from negspace.mllm.prompts import describe_request, vsnl_request
from negspace.mllm.protocol import ChatRequest, GenerationParams, Message, MLLMStats
from negspace.mllm.response_cache import (
    MLLM_DB,
    CachedMLLM,
    cache_stats,
    clear_cache,
    format_cache_stats,
    request_key,
)

CHAT = "/v1/chat/completions"


class Scripted:
    """A backend answering from a function, counting what it was asked."""

    def __init__(self, answer=lambda req: "ans:" + req.messages[0].content[-1].text, model_id="scripted"):
        self.answer = answer
        self.model_id = model_id
        self.stats = MLLMStats()
        self.seen: list[ChatRequest] = []

    def generate(self, requests):
        out = []
        for r in requests:
            self.seen.append(r)
            self.stats.calls += 1
            a = self.answer(r)
            if a is None:
                self.stats.failures += 1
            out.append(a)
        return out


def q(text: str, **params) -> ChatRequest:
    return ChatRequest((Message.user(text),), GenerationParams(**params))


def test_hits_misses_and_stats(tmp_path):
    b = Scripted()
    c = CachedMLLM(b, tmp_path / "m.sqlite3")
    assert c.model_id == "scripted"
    assert c.generate([q("a"), q("b"), q("a")]) == ["ans:a", "ans:b", "ans:a"]
    assert len(b.seen) == 2  # the duplicate went once
    assert c.generate([q("b"), q("c")]) == ["ans:b", "ans:c"]
    assert len(b.seen) == 3
    assert c.stats.cache_hits == 1 and c.stats.calls == 3 and c.stats.failures == 0
    assert c.generate([]) == []


def test_answers_are_committed_chunk_by_chunk(tmp_path):
    calls = []

    def answer(req):
        text = req.messages[0].content[-1].text
        if text == "boom":
            raise KeyboardInterrupt  # the run is killed while the second chunk is out
        calls.append(text)
        return "ans:" + text

    c = CachedMLLM(Scripted(answer=answer), tmp_path / "m.sqlite3", chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        c.generate([q("a"), q("b"), q("c"), q("boom")])
    fresh = CachedMLLM(Scripted(), tmp_path / "m.sqlite3")
    assert fresh.generate([q("a"), q("b")]) == ["ans:a", "ans:b"] and fresh.stats.cache_hits == 2


def test_failures_are_not_cached(tmp_path):
    answers = iter([None, "late"])
    b = Scripted(answer=lambda r: next(answers))
    c = CachedMLLM(b, tmp_path / "m.sqlite3")
    assert c.generate([q("x")]) == [None]
    assert c.stats.failures == 1
    assert c.generate([q("x")]) == ["late"]
    assert c.generate([q("x")]) == ["late"] and len(b.seen) == 2


def test_key_covers_model_params_text_and_image_content(tmp_path):
    p1, p2, p3 = tmp_path / "1.png", tmp_path / "2.png", tmp_path / "3.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(p1)
    p2.write_bytes(p1.read_bytes())
    Image.new("RGB", (8, 8), (9, 9, 9)).save(p3)
    k = request_key("m", describe_request(p1, "cat"))
    assert k == request_key("m", describe_request(p2, "cat"))  # same bytes, other path
    assert k != request_key("m", describe_request(p3, "cat"))
    assert k != request_key("m", describe_request(p1, "dog"))
    assert k != request_key("m2", describe_request(p1, "cat"))
    assert k != request_key("m", describe_request(p1, "cat", GenerationParams(max_tokens=9)))
    assert k != request_key("m", describe_request(p1, "cat", GenerationParams(seed=1)))
    pil = Image.new("RGB", (8, 8), (1, 2, 3))
    assert request_key("m", describe_request(pil, "cat")) == request_key(
        "m", describe_request(Image.new("RGB", (8, 8), (1, 2, 3)), "cat")
    )
    assert request_key("m", vsnl_request("cat")) != request_key("m", vsnl_request("dog"))


def test_default_path_is_under_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path / "cd"))
    c = CachedMLLM(Scripted())
    assert c.cache_path == tmp_path / "cd" / MLLM_DB
    c.generate([q("a")])
    assert (tmp_path / "cd" / MLLM_DB).exists()


def test_unreadable_image_goes_to_backend_uncached(tmp_path):
    b = Scripted(answer=lambda r: None)
    c = CachedMLLM(b, tmp_path / "m.sqlite3")
    assert c.generate([describe_request(tmp_path / "missing.png", "cat")]) == [None]
    assert c.stats.failures == 1


def test_cache_stats_and_clear(tmp_path):
    empty = cache_stats(tmp_path / "nothing")
    assert empty["features"]["entries"] == 0 and empty["mllm"]["entries"] == 0
    assert not empty["mllm"]["exists"]
    store = FeatureStore.in_dir(tmp_path)
    store.put_many({"k1": np.ones(4), "k2": np.zeros(4)})
    CachedMLLM(Scripted(model_id="A"), tmp_path / MLLM_DB).generate([q("1"), q("2")])
    CachedMLLM(Scripted(model_id="B"), tmp_path / MLLM_DB).generate([q("1")])
    st = cache_stats(tmp_path)
    assert st["features"]["entries"] == 2 and st["features"]["size_bytes"] > 0
    assert st["mllm"]["entries"] == 3 and st["mllm"]["per_model"] == {"A": 2, "B": 1}
    json.dumps(st)  # printable by the CLI
    text = format_cache_stats(st)
    assert "features: 2 entries" in text and "MLLM answers: 3 entries" in text and "    A: 2" in text
    assert clear_cache(tmp_path, "mllm") == {"mllm": 3}
    st = cache_stats(tmp_path)
    assert st["mllm"]["entries"] == 0 and st["features"]["entries"] == 2
    (tmp_path / "mined").mkdir()
    (tmp_path / "mined" / "labels.json").write_text("{}", encoding="utf-8")
    assert clear_cache(tmp_path, "all") == {"features": 2, "mllm": 0, "mined label lists": 1}
    assert not (tmp_path / "mined" / "labels.json").exists()
    assert cache_stats(tmp_path)["features"]["entries"] == 0
    assert store.get_many(["k1"]) == {}  # the open store still works
    store.put_many({"k3": np.ones(2)})
    assert store.count() == 1
    with pytest.raises(NegspaceError, match="all, features or mllm"):
        clear_cache(tmp_path, "everything")


# -- across processes and restarts, against a real HTTP server --------------------------------------


@pytest.fixture
def server():
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()

    def handler(request):
        payload = request.get_json()
        content = payload["messages"][-1]["content"]
        text = content if isinstance(content, str) else content[-1]["text"]
        body = {"choices": [{"message": {"role": "assistant", "content": "re:" + text}}]}
        return Response(json.dumps(body), content_type="application/json")

    srv.expect_request(CHAT, method="POST").respond_with_handler(handler)
    yield srv
    srv.stop()


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from negspace.mllm import load_mllm, vsnl_request, describe_request
    url, cache_dir, lo, hi, img = sys.argv[1:6]
    mllm = load_mllm(f"openai:{url}/tiny-vl", cache_dir=cache_dir, check=False, max_concurrency=4)
    reqs = [vsnl_request(f"class{i}") for i in range(int(lo), int(hi))]
    reqs.append(describe_request(img, "cat"))
    answers = mllm.generate(reqs)
    print(json.dumps({"answers": answers, "stats": mllm.stats.as_dict()}))
    """
)


def run_script(url, cache_dir, lo, hi, img):
    # SIGINT as a terminal gives it: a suite started in the background (`cmd &` without job control)
    # hands its children SIGINT ignored, and Python then keeps ignoring it
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, url, str(cache_dir), str(lo), str(hi), str(img)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # the child is single-threaded when this runs (before exec): SIGINT must have its default action
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def finish(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_cache_across_two_processes_and_a_restart(server, tmp_path):
    url = server.url_for("/v1")
    img = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)
    cache_dir = tmp_path / "cache"
    # two processes at once, overlapping requests, one shared SQLite file
    a, b = run_script(url, cache_dir, 0, 20, img), run_script(url, cache_dir, 10, 30, img)
    ra, rb = finish(a), finish(b)
    assert ra["answers"][:20] == [
        f"re:{t}"
        for t in [
            f"Give five different class names that share visual features with class{i}, "
            f"excluding class{i}. Put each numbered class on a separate line."
            for i in range(20)
        ]
    ]
    assert ra["answers"][-1].startswith("re:Describe this image")
    assert ra["stats"]["failures"] == 0 and rb["stats"]["failures"] == 0
    first_run = len(server.log)
    assert 31 <= first_run <= 42  # 30 classes + the image; overlap may be asked twice at most
    assert cache_stats(cache_dir)["mllm"]["entries"] == 31
    # a restart (a new process) asks nothing
    rc = finish(run_script(url, cache_dir, 0, 30, img))
    assert len(server.log) == first_run
    assert rc["stats"]["calls"] == 0 and rc["stats"]["cache_hits"] == 31
    assert rc["answers"][:20] == ra["answers"][:20] and rc["answers"][-1] == ra["answers"][-1]


def test_clearing_a_damaged_cache_removes_the_file(tmp_path):
    (tmp_path / "mllm.sqlite3").write_bytes(b"this is not a database at all" * 100)
    removed = clear_cache(tmp_path, "mllm")
    assert removed == {"mllm (damaged file removed)": 0} and not (tmp_path / "mllm.sqlite3").exists()


def test_ctrl_c_keeps_every_answer_that_arrived(tmp_path):
    """A real process, a real server: 3 answers arrive at once, the rest hang; SIGINT; the 3 are cached."""
    import threading

    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    release = threading.Event()

    def handler(request):
        content = request.get_json()["messages"][-1]["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)  # image requests
        if not text.endswith(
            (
                "class0, excluding class0. Put each numbered class on a separate line.",
                "class1, excluding class1. Put each numbered class on a separate line.",
                "class2, excluding class2. Put each numbered class on a separate line.",
            )
        ):
            release.wait(300)  # hangs until the test ends
        body = {"choices": [{"message": {"role": "assistant", "content": "re:" + text}}]}
        return Response(json.dumps(body), content_type="application/json")

    srv.expect_request(CHAT, method="POST").respond_with_handler(handler)
    img = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(img)
    try:
        proc = run_script(srv.url_for("/v1"), tmp_path / "cache", 0, 8, img)
        # the three answers reach the client and are committed as they arrive, the rest still hang
        deadline = time.monotonic() + 60
        while _mllm_entries(tmp_path / "cache") < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _mllm_entries(tmp_path / "cache") == 3 and not release.is_set()
        proc.send_signal(signal.SIGINT)
        # the interrupt is handled (Python prints its traceback before it joins the threads still
        # waiting on the server) before the hanging answers are released
        for line in proc.stderr:
            if "KeyboardInterrupt" in line:
                break
        else:
            pytest.fail("the script ended without being interrupted")
        release.set()  # the requests still in flight end (their answers come after the interrupt)
        proc.communicate(timeout=60)
        assert proc.returncode != 0 and cache_stats(tmp_path / "cache")["mllm"]["entries"] == 3
    finally:
        release.set()
        srv.stop()


def _mllm_entries(cache_dir) -> int:
    """Answers committed to the MLLM cache so far (0 before the file exists)."""
    return cache_stats(cache_dir)["mllm"]["entries"]
