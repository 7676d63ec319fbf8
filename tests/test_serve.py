"""``negspace serve`` with a frozen detector: a real uvicorn on 127.0.0.1, real clients, real
files; the scores are `negspace score`'s, every bad request a 4xx that names what is wrong."""

from __future__ import annotations

import io
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

import negspace
from fixtures_models import TINY_DIM
from negspace import load_detector
from negspace.cli import main
from negspace.encoders import load_encoder
from negspace.runconfig import ModelConfig
from negspace.serve import ServeConfig, build_app, create_app
from negspace.serve.encode import encode_image_bytes
from numerics import FEATURE_ERROR, assert_scores_close
from serve_support import metric, model_args, save_detector, thread_server, write_images


def _model(tiny) -> ModelConfig:
    return ModelConfig(spec=tiny.spec, weights=tiny.weights, device="cpu", progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_openclip):
    """A saved NegLabel detector, 24 images of two sizes and formats, and `negspace score`'s rows of them."""
    root = tmp_path_factory.mktemp("serve")
    detector = save_detector(root, tiny_openclip)
    images = write_images(root / "pool", 16, seed=7) + write_images(root / "pool", 8, seed=8, size=(50, 20), fmt="png")
    assert (
        main(
            [
                "score",
                str(root / "pool"),
                "--detector",
                str(detector),
                "--out",
                str(root / "scored"),
                *model_args(tiny_openclip),
            ]
        )
        == 0
    )
    rows = ds.dataset(root / "scored", format="parquet").to_table().to_pylist()
    return {"root": root, "detector": detector, "images": images, "rows": {r["sha256"]: r for r in rows}}


@pytest.fixture(scope="module")
def server(world, tiny_openclip):
    config = ServeConfig(detector=world["detector"], max_batch=16, max_wait_ms=20, max_queue=4096)
    with thread_server(build_app(config, _model(tiny_openclip))) as url:
        yield url


def _files(paths):
    return [("images", (p.name, p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg")) for p in paths]


def test_concurrent_clients_each_get_every_image_once_with_the_score_of_negspace_score(world, server):
    """32 clients x 10 requests of 1-3 images: each image answered once, in its request's order,
    with `negspace score`'s score (within the float32 bound), flag and labels; the batcher made
    batches of several requests."""
    images, rows = world["images"], world["rows"]
    threshold = json.loads((world["detector"] / "provenance.json").read_text())["threshold_95_id_recall"]
    before = httpx.get(f"{server}/metrics", timeout=60).text

    def client(seed: int) -> list[tuple[list[Path], dict]]:
        rng = random.Random(seed)
        done = []
        with httpx.Client(base_url=server, timeout=60) as http:
            for _ in range(10):
                sent = rng.sample(images, rng.randint(1, 3))
                response = http.post("/v1/score", files=_files(sent))
                assert response.status_code == 200, response.text
                done.append((sent, response.json()))
        return done

    with ThreadPoolExecutor(32) as pool:
        answered = [pair for done in pool.map(client, range(32)) for pair in done]
    assert len(answered) == 320
    served, expected = [], []
    for sent, body in answered:
        results = body["results"]
        assert [r["name"] for r in results] == [p.name for p in sent]  # each image once, in order
        for path, result in zip(sent, results, strict=True):
            row = rows[result["sha256"]]  # the image's bytes, hashed by the server
            assert Path(row["path"]).name == path.name
            assert result["ood"] == (result["score"] < threshold) and result["threshold"] == threshold
            served.append(result["score"])
            expected.append(row["score"])
            assert result["id_class"] == row["id_class"] and result["negative_label"] == row["top_negative"]
            assert -1 <= result["id_cosine"] <= 1 and -1 <= result["negative_cosine"] <= 1
    assert_scores_close(served, expected, dim=TINY_DIM, feature_error=FEATURE_ERROR)
    after = httpx.get(f"{server}/metrics", timeout=60).text
    sent_images = sum(len(sent) for sent, _ in answered)
    count = "negspace_batch_size_count"
    batches = metric(after, count) - metric(before, count)
    rows_in_batches = metric(after, "negspace_batch_size_sum") - metric(before, "negspace_batch_size_sum")
    assert rows_in_batches == sent_images
    assert batches < sent_images  # some batch held more than one image
    single = 'negspace_batch_size_bucket{le="1.0"}'
    assert metric(after, single) - metric(before, single) < batches
    scored = 'negspace_images_total{outcome="scored"}'
    assert metric(after, scored) - metric(before, scored) == sent_images


def test_the_bytes_of_one_image_and_feature_vectors_score_as_the_files(world, server, tiny_openclip):
    path = world["images"][0]
    row = world["rows"][__import__("hashlib").sha256(path.read_bytes()).hexdigest()]
    raw = httpx.post(
        f"{server}/v1/score",
        content=path.read_bytes(),
        params={"name": "mine.jpg"},
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    ).json()["results"][0]
    assert raw["name"] == "mine.jpg" and raw["sha256"] == row["sha256"]
    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu")
    features = encoder.encode_image_files(world["images"][:5], progress=False).features
    body = httpx.post(f"{server}/v1/score/features", json={"features": (3 * features).tolist()}, timeout=60).json()[
        "results"
    ]
    assert [r["name"] for r in body] == [f"row-{i}" for i in range(5)] and all(r["sha256"] is None for r in body)
    detector = load_detector(world["detector"])
    # raw (unnormalised) features are normalised by the server, as the detectors do
    assert_scores_close([r["score"] for r in body], detector.score_features(features), dim=TINY_DIM)
    assert_scores_close([raw["score"]], [row["score"]], dim=TINY_DIM, feature_error=FEATURE_ERROR)


def test_in_memory_encoding_equals_encoding_the_files(world, tiny_openclip):
    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", use_cache=False)
    paths = world["images"][14:20]  # JPEGs and PNGs of two sizes
    from_files = encoder.encode_image_files(paths, batch_size=len(paths), progress=False).features
    in_memory = encode_image_bytes(encoder, [p.read_bytes() for p in paths])
    assert in_memory.dtype == np.float32 and in_memory.shape == from_files.shape
    assert np.abs(in_memory - from_files).max() <= FEATURE_ERROR


def _png_of_pixels(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BAD_REQUESTS = [
    # (what, request keywords, status, words the message must hold)
    (
        "truncated",
        lambda w: {"files": [("images", ("cut.jpg", w["images"][0].read_bytes()[:600], "image/jpeg"))]},
        422,
        ["cut.jpg"],
    ),
    ("zero bytes", lambda w: {"files": [("images", ("empty.jpg", b"", "image/jpeg"))]}, 422, ["empty.jpg", "empty"]),
    (
        "not an image",
        lambda w: {"files": [("images", ("notes.jpg", b"hello, world" * 20, "image/jpeg"))]},
        422,
        ["notes.jpg"],
    ),
    (
        "pixel bomb",
        lambda w: {"files": [("images", ("bomb.png", _png_of_pixels(9000, 9000), "image/png"))]},
        413,
        ["bomb.png", "81,000,000", "--max-pixels"],
    ),
    (
        "100 MB body",
        lambda w: {"content": b"\0" * 100_000_000, "headers": {"Content-Type": "image/jpeg"}},
        413,
        ["--max-body-mb"],
    ),
    ("wrong content type", lambda w: {"json": {"image": "x"}}, 415, ["application/json", "/v1/score/features"]),
    (
        "malformed multipart",
        lambda w: {"content": b"garbage, no part", "headers": {"Content-Type": "multipart/form-data; boundary=xx"}},
        400,
        ["multipart"],
    ),
    (
        "a URL instead of a file",
        lambda w: {"data": {"url": "http://example.com/a.jpg"}, "files": _files(w["images"][:1])},
        422,
        ["'url'", "URL"],
    ),
    ("a form without files", lambda w: {"data": {"images": "a.jpg"}}, 415, ["x-www-form-urlencoded"]),
    ("too many images", lambda w: {"files": _files(w["images"][:1] * 9)}, 413, ["--max-images"]),
]
BAD_FEATURES = [
    ("wrong size", {"features": [[0.1] * 7]}, 422, ["7", str(TINY_DIM)]),
    ("NaN", {"features": [[0.1] * TINY_DIM, [float("nan")] + [0.1] * (TINY_DIM - 1)]}, 422, ["row 1", "NaN"]),
    ("all zeros", {"features": [[0.0] * TINY_DIM]}, 422, ["row 0", "zero"]),
    ("not a list", {"features": "none"}, 422, ["features"]),
]


@pytest.fixture(scope="module")
def small_server(world, tiny_openclip):
    config = ServeConfig(detector=world["detector"], max_images=8, max_pixels=40_000_000)
    with thread_server(build_app(config, _model(tiny_openclip))) as url:
        yield url


@pytest.mark.parametrize("what, request_of, status, words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_bad_image_request_is_a_4xx_naming_what_is_wrong_and_the_server_stays_healthy(
    world, small_server, what, request_of, status, words
):
    response = httpx.post(f"{small_server}/v1/score", timeout=60, **request_of(world))
    _assert_refused(response, status, words)
    _assert_healthy(small_server, world)


@pytest.mark.parametrize("what, body, status, words", BAD_FEATURES, ids=[b[0] for b in BAD_FEATURES])
def test_bad_features_are_a_4xx_naming_the_row(world, small_server, what, body, status, words):
    # NaN is not JSON: sent as Python's json writes it, as a client might
    response = httpx.post(
        f"{small_server}/v1/score/features",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    _assert_refused(response, status, words)
    _assert_healthy(small_server, world)


def test_unknown_routes_methods_and_a_json_body_that_is_not_json(world, small_server):
    _assert_refused(httpx.get(f"{small_server}/v2/score", timeout=60), 404, ["/v2/score", "/v1"])
    _assert_refused(httpx.delete(f"{small_server}/v1/score", timeout=60), 405, ["DELETE"])
    _assert_refused(
        httpx.post(
            f"{small_server}/v1/score/features",
            content=b'{"features": [[1',
            headers={"Content-Type": "application/json"},
            timeout=60,
        ),
        422,
        ["JSON"],
    )
    _assert_refused(httpx.post(f"{small_server}/v1/state/reset", timeout=60), 409, ["--adapt"])
    _assert_refused(
        httpx.post(f"{small_server}/v1/score", params={"explain": 3}, files=_files(world["images"][:1]), timeout=60),
        422,
        ["ANTS"],
    )
    _assert_healthy(small_server, world)
    metrics = httpx.get(f"{small_server}/metrics", timeout=60).text
    assert metric(metrics, 'negspace_errors_total{kind="not_found"}') >= 1
    assert metric(metrics, 'negspace_requests_total{outcome="client_error",route="other"}') >= 1


def _assert_refused(response: httpx.Response, status: int, words: list[str]) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] and error["message"].strip()
    for word in words:
        assert word in error["message"], (word, error["message"])


def _assert_healthy(url: str, world) -> None:
    assert httpx.get(f"{url}/healthz", timeout=60).json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz", timeout=60).status_code == 200
    response = httpx.post(f"{url}/v1/score", files=_files(world["images"][:2]), timeout=60)
    assert response.status_code == 200 and len(response.json()["results"]) == 2


def test_a_full_queue_answers_503_with_retry_after(world):
    """A scorer held still fills the queue: the next request is refused at once with Retry-After."""
    release = threading.Event()
    detector = load_detector(world["detector"])

    class Held:
        adapts, mode, needs_images = False, None, False

        def score(self, features, images=None, explain=None):
            release.wait(30)
            from negspace.serve.adapt import scored_rows

            return scored_rows(detector, features, *detector.score_with_nearest(features), explain)

        def counters(self):
            return {}

        def close(self):
            release.set()

    config = ServeConfig(threshold=0.5, max_batch=2, max_wait_ms=0, max_queue=4, max_images=4)
    app = create_app(config, detector, threshold=0.5, scorer=Held())
    row = {"features": [[0.1] * TINY_DIM] * 2}
    with thread_server(app) as url, ThreadPoolExecutor(4) as pool:
        # one request held by the scorer, two more filling the queue's 4 rows
        waiting = [pool.submit(httpx.post, f"{url}/v1/score/features", json=row, timeout=60) for _ in range(3)]
        for _ in range(600):
            if metric(httpx.get(f"{url}/metrics", timeout=60).text, "negspace_queue_rows") == 4:
                break
            time.sleep(0.05)
        refused = httpx.post(f"{url}/v1/score/features", json=row, timeout=5)
        release.set()
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["kind"] == "queue_full" and "--max-queue" in refused.json()["error"]["message"]
        assert all(f.result().status_code == 200 for f in waiting)


def test_a_token_is_required_off_loopback_and_never_shown(world, tiny_openclip, tmp_path, caplog, capsys):
    token = "s3cret-token-" + "x" * 20
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    # another address without a token is refused before the model loads
    assert main(["serve", "--detector", str(world["detector"]), "--host", "0.0.0.0", *model_args(tiny_openclip)]) == 2
    assert "--token-file" in capsys.readouterr().err
    config = ServeConfig(detector=world["detector"], token_file=token_file)
    logging.getLogger("negspace").propagate = True  # main() stopped it: caplog listens at the root
    caplog.set_level(logging.DEBUG, logger="negspace")
    with thread_server(build_app(config, _model(tiny_openclip))) as url:
        files = _files(world["images"][:1])
        _assert_refused(httpx.post(f"{url}/v1/score", files=files, timeout=60), 401, ["Authorization: Bearer"])
        refused = httpx.post(f"{url}/v1/score", files=files, headers={"Authorization": "Bearer nope"}, timeout=60)
        _assert_refused(refused, 401, ["not this server's"])
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        _assert_refused(httpx.get(f"{url}/metrics", timeout=60), 401, [])
        good = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/v1/score", files=files, headers=good, timeout=60).status_code == 200
        assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200  # health needs no token
        shown = [
            httpx.get(f"{url}{path}", headers=good, timeout=60).text
            for path in ("/v1/detector", "/metrics", "/v1/stats", "/")
        ]
        with negspace.Client(url, token=token) as client:
            assert client.score(world["images"][:2])[1]["name"] == str(world["images"][1])
            assert token not in repr(client)
    assert metric(shown[1], 'negspace_errors_total{kind="unauthorized"}') == 3
    assert all(token not in text for text in shown)
    assert "serving neglabel" in caplog.text  # the server's log was captured: the next check has a text to read
    assert token not in caplog.text and token not in capsys.readouterr().err


def test_the_openapi_schema_and_the_detector_route_describe_the_api(world, server):
    schema = httpx.get(f"{server}/openapi.json", timeout=60).json()
    for path in (
        "/v1/score",
        "/v1/score/features",
        "/v1/detector",
        "/v1/state/snapshot",
        "/v1/state/reset",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in schema["paths"], path
    score = schema["paths"]["/v1/score"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(score["requestBody"]["content"])
    assert "422" in score["responses"] and "503" in score["responses"]
    info = httpx.get(f"{server}/v1/detector", timeout=60).json()
    provenance = json.loads((world["detector"] / "provenance.json").read_text())
    assert info["method"] == "neglabel" and info["digest"].startswith("sha256:") and info["adapts"] is False
    assert info["weights_fingerprint"] == provenance["weights_fingerprint"] and info["dim"] == TINY_DIM
    assert info["threshold"] == provenance["threshold_95_id_recall"] and "saved" in info["threshold_source"]
    assert info["negspace_version"] == negspace.__version__


def test_the_client_scores_files_in_order_and_a_refusal_is_one_sentence(world, server):
    with negspace.Client(server, batch=5) as client:
        paths = world["images"][:12]
        rows = client.score(paths)
        assert [r["name"] for r in rows] == [str(p) for p in paths]
        expected = [world["rows"][r["sha256"]]["score"] for r in rows]
        assert_scores_close([r["score"] for r in rows], expected, dim=TINY_DIM, feature_error=FEATURE_ERROR)
        assert client.detector()["method"] == "neglabel" and client.ready()
        with pytest.raises(negspace.NegspaceError, match="wrong_dimension"):
            client.score_features(np.ones((2, 3)))
    assert not negspace.Client("http://127.0.0.1:1").ready()


def test_create_app_serves_a_detector_built_in_python_from_features(world):
    """No encoder: features are scored, images refused with the reason."""
    detector = load_detector(world["detector"])
    app = create_app(ServeConfig(), detector, threshold=0.25)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, TINY_DIM)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    with thread_server(app) as url:
        body = httpx.post(
            f"{url}/v1/score/features", json={"features": features.tolist(), "names": list("abcdef")}, timeout=60
        )
        results = body.json()["results"]
        _assert_refused(
            httpx.post(f"{url}/v1/score", files=_files(world["images"][:1]), timeout=60), 409, ["/v1/score/features"]
        )
    assert [r["name"] for r in results] == list("abcdef")
    assert_scores_close([r["score"] for r in results], detector.score_features(features), dim=TINY_DIM)
    nearest_id, negatives = detector.nearest_labels(features)
    assert [r["id_class"] for r in results] == [detector.class_names[i] for i in nearest_id]
    assert [r["negative_label"] for r in results] == negatives
    assert [r["ood"] for r in results] == [r["score"] < 0.25 for r in results]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--adapt"], ["--adapt", "does not learn"]),
        (["--state-dir", "STATE"], ["--state-dir", "--adapt"]),
        (["--token-file", "MISSING"], ["--token-file", "cannot be read"]),
        (["--threshold", "0.5", "--threshold-id", "ID"], ["--threshold", "--threshold-id"]),
    ],
)
def test_serve_refuses_what_it_cannot_do_in_one_sentence(world, tiny_openclip, tmp_path, capsys, extra, words):
    extra = [
        str(tmp_path / a) if a in ("STATE", "MISSING") else str(world["root"] / "id") if a == "ID" else a for a in extra
    ]
    assert main(["serve", "--detector", str(world["detector"]), *extra, *model_args(tiny_openclip)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err
