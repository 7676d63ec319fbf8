"""``negspace serve --engine ray --replicas N``: two replicas of a saved detector on a real local
Ray Serve (2 CPUs, half a CPU per replica), reached through Serve's HTTP proxy with real HTTP
requests; and the refusals, from the command line, before Ray or a model starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from external_tools import require_module
from fixtures_models import TINY_DIM
from negspace.errors import NegspaceError
from negspace.runconfig import ModelConfig
from negspace.serve import ServeConfig, build_app
from numerics import FEATURE_ERROR, assert_scores_close
from serve_support import free_port, model_args, save_detector, thread_server, write_images

TOKEN = "a-token-for-the-replica-tests-0123"
CLI = [sys.executable, "-c", "import sys; from negspace.cli import main; sys.exit(main())", "serve"]


def _model(tiny) -> ModelConfig:
    return ModelConfig(spec=tiny.spec, weights=tiny.weights, device="cpu", use_cache=False, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_openclip):
    """A saved NegLabel detector, a token file and 12 images."""
    root = tmp_path_factory.mktemp("serve-ray")
    (root / "token").write_text(TOKEN, encoding="utf-8")
    return {
        "root": root,
        "detector": save_detector(root, tiny_openclip),
        "images": write_images(root / "pool", 12, seed=21),
    }


def _config(world, **changes) -> ServeConfig:
    return ServeConfig(detector=world["detector"], token_file=world["root"] / "token", max_images=4, **changes)


@pytest.fixture(scope="module")
def replicas(world, tiny_openclip):
    """`negspace serve --engine ray --replicas 2 --threshold-id ID` in a subprocess (its own local
    Ray, half a CPU per replica): one deployment for the module, stopped with SIGTERM afterwards."""
    require_module("grpc", extra="ray")  # of ray[serve]: absent where only Ray Data was installed
    require_module("ray", extra="ray")
    port, log_path = free_port(), world["root"] / "serve-ray.log"
    with log_path.open("w", encoding="utf-8") as log:  # a file, not a pipe nobody reads
        process = subprocess.Popen(
            [
                *CLI,
                "--detector",
                str(world["detector"]),
                "--token-file",
                str(world["root"] / "token"),
                "--max-images",
                "4",
                "--threshold-id",
                str(world["root"] / "id"),
                "--engine",
                "ray",
                "--replicas",
                "2",
                "--replica-cpus",
                "0.5",
                "--port",
                str(port),
                "--no-cache",
                *model_args(tiny_openclip),
                "-v",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        text = log_path.read_text(encoding="utf-8")
        assert returncode == 0, text[-4000:]
        assert f"listening on {url}: 2 replicas on Ray Serve" in text and "Traceback" not in text, text[-4000:]
        assert text.count("worked out once for the 2 replicas") == 1, text[-4000:]


def _wait_ready(url: str, process: subprocess.Popen, log_path) -> None:
    """Until the command says where it listens (Ray started, every replica loaded its model; one
    replica answering /readyz is not enough), then until the proxy answers."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}: {log_path.read_text()[-4000:]}")
        if f"listening on {url}" in log_path.read_text(encoding="utf-8"):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after 600 s: {log_path.read_text()[-4000:]}")


def _score(url: str, paths, token: str | None = TOKEN) -> httpx.Response:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v1/score", files=files, headers=headers, timeout=120)


def test_a_replica_that_cannot_start_is_one_sentence_naming_its_error(world, tiny_openclip, tmp_path):
    """Unreadable weights fail in the replicas, not in the command: Serve's status gives their
    error back, as one sentence, exit 2 (one replica: Serve retries a failing constructor a few
    times per replica). (First in the module: its own local Ray, stopped before
    the two-replica deployment starts another.)"""
    require_module("grpc", extra="ray")
    require_module("ray", extra="ray")
    (tmp_path / "bad.pt").write_text("not a checkpoint", encoding="utf-8")
    args = [*model_args(tiny_openclip)]
    args[args.index("--weights") + 1] = str(tmp_path / "bad.pt")
    result = _cli(
        "--detector",
        str(world["detector"]),
        "--engine",
        "ray",
        "--replica-cpus",
        "0.5",
        "--port",
        str(free_port()),
        "--no-cache",
        *args,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-4000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("negspace: error:")]
    assert len(error) == 1 and "did not start on Ray Serve" in error[0], result.stderr[-4000:]
    assert f"weights {tmp_path / 'bad.pt'} is not a checkpoint" in error[0]
    assert "Traceback" not in result.stderr


def test_two_replicas_both_answer_with_the_scores_of_the_local_app(world, replicas, tiny_openclip):
    """Concurrent requests through Serve's proxy reach both replicas (two distinct
    X-Negspace-Replica names) and get the local app's scores, within the float32 bound."""
    images = world["images"]
    with thread_server(build_app(_local_config(world), _model(tiny_openclip))) as local_url:
        local = {r["name"]: r for r in _score(local_url, images[:4]).json()["results"]}
        for start in range(4, len(images), 4):
            local.update({r["name"]: r for r in _score(local_url, images[start : start + 4]).json()["results"]})
    requests = [images[i % len(images) : i % len(images) + 2] for i in range(48)]
    answers: list[httpx.Response] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):  # Serve's proxy learns of a replica a moment after the deployment is up
            answers += pool.map(lambda paths: _score(replicas, paths), requests)
            if len({answer.headers.get("X-Negspace-Replica") for answer in answers}) >= 2:
                break
    names = set()
    for paths, answer in zip(requests * 5, answers, strict=False):
        assert answer.status_code == 200, answer.text
        names.add(answer.headers["X-Negspace-Replica"])
        results = answer.json()["results"]
        assert [r["name"] for r in results] == [p.name for p in paths]
        for row in results:
            expected = local[row["name"]]
            assert_scores_close(row["score"], expected["score"], dim=TINY_DIM, feature_error=FEATURE_ERROR)
            assert (row["sha256"], row["ood"], row["id_class"]) == (
                expected["sha256"],
                expected["ood"],
                expected["id_class"],
            )
    assert len(names) == 2 and all(names), names


def test_replicas_keep_the_token_and_the_limits_of_the_app(world, replicas):
    no_token = _score(replicas, world["images"][:1], token=None)
    assert no_token.status_code == 401 and no_token.json()["error"]["kind"] == "unauthorized"
    assert no_token.headers["X-Negspace-Replica"]
    too_many = _score(replicas, world["images"][:5])
    assert too_many.status_code == 413 and too_many.json()["error"]["kind"] == "too_many_images"
    detector = _describe(replicas)
    assert detector.status_code == 200 and detector.json()["method"] == "neglabel"
    assert httpx.get(f"{replicas}/readyz", timeout=60).status_code == 200


def _scored_by_replica(url: str) -> tuple[dict[str, float], str]:
    """The deployment's /metrics through the proxy: images scored per replica, and the page."""
    from prometheus_client.parser import text_string_to_metric_families

    page = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert page.status_code == 200, page.text
    scored = {
        sample.labels["replica"]: sample.value
        for family in text_string_to_metric_families(page.text)
        for sample in family.samples
        if sample.name == "negspace_images_total" and sample.labels.get("outcome") == "scored"
    }
    return scored, page.text


def test_metrics_through_the_proxy_count_every_replica_each_under_its_name(world, replicas):
    """Whichever replica answers the scrape, /metrics gives both replicas' counters, labelled, and
    after traffic each replica's count has grown by exactly the images it answered (the other
    replica's figures reach the page within a couple of seconds: polled, with a deadline)."""
    deadline = time.monotonic() + 120
    while True:  # settled: both replicas on the page, unchanged over more than one push
        before, _ = _scored_by_replica(replicas)
        time.sleep(3)
        again, page = _scored_by_replica(replicas)
        if len(before) == 2 and again == before:
            break
        assert time.monotonic() < deadline, (before, again)
    assert page.count("# TYPE negspace_images_total counter") == 1
    sent: dict[str, int] = dict.fromkeys(before, 0)
    requests = [world["images"][i % 12 : i % 12 + 2] for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        for paths, answer in zip(requests, pool.map(lambda paths: _score(replicas, paths), requests), strict=True):
            assert answer.status_code == 200, answer.text
            sent[answer.headers["X-Negspace-Replica"]] += len(paths)
    expected = {replica: before[replica] + n for replica, n in sent.items()}
    deadline = time.monotonic() + 60
    while (now := _scored_by_replica(replicas)[0]) != expected:
        assert time.monotonic() < deadline, f"scored per replica {now}, expected {expected} (sent {sent})"
        time.sleep(0.5)


def _local_config(world) -> ServeConfig:
    return _config(world, threshold_id=str(world["root"] / "id"))


def test_the_threshold_id_threshold_is_worked_out_once_and_every_replica_flags_with_it(world, replicas, tiny_openclip):
    """One Ray task encodes the ID images before the replicas start: both replicas say the same
    threshold, the local app's, and where it came from."""
    with thread_server(build_app(_local_config(world), _model(tiny_openclip))) as local_url:
        local = _describe(local_url).json()
    seen = {}
    # concurrent: one request at a time can go to the same idle replica every time (CI saw 40 in a row)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            for answer in pool.map(lambda _: _describe(replicas), range(32)):
                assert answer.status_code == 200, answer.text
                seen[answer.headers["X-Negspace-Replica"]] = answer.json()
            if len(seen) == 2:
                break
    assert len(seen) == 2, sorted(seen)
    for described in seen.values():
        assert described["threshold_source"] == local["threshold_source"]
        assert "95% recall of the 6 ID images" in described["threshold_source"]
        assert_scores_close(described["threshold"], local["threshold"], dim=TINY_DIM, feature_error=FEATURE_ERROR)
    (first, second) = seen.values()
    assert first["threshold"] == second["threshold"]  # one number, given to both


def _describe(url: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/detector", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--adapt", "--engine", "ray", "--replicas", "2"], "one writer"),
        (["--adapt", "sync", "--replicas", "3", "--engine", "ray"], "one writer"),
        (["--replicas", "2"], "needs --engine ray"),
        (["--replica-cpus", "0.5"], "add --engine ray"),
        (["--engine", "ray", "--port", "0"], "--port 0"),
    ],
)
def test_bad_combinations_are_refused_in_one_sentence_before_ray_or_a_model_starts(tmp_path, options, named):
    """An unloadable model and a cluster address where nothing answers: reaching either would
    give another error, so the refusal came first."""
    result = _cli(
        "--detector",
        str(tmp_path),
        "--model",
        "openclip:NoSuchArch/none",
        *(["--ray-address", "127.0.0.1:1"] if "--engine" in options else []),
        *options,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("negspace: error:") == 1 and "NoSuchArch" not in result.stderr
    assert "127.0.0.1:1" not in result.stderr


def test_the_adapt_refusal_says_why_and_what_to_do_instead():
    with pytest.raises(NegspaceError, match=r"one writer.*one replica, or serve it frozen"):
        ServeConfig(adapt="auto", engine="ray", replicas=2).check_settings()
    ServeConfig(adapt="auto", engine="ray", replicas=1).check_settings()  # one replica keeps one writer
