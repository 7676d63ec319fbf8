"""Adaptive serving: a test-time detector learning from the traffic, one writer, batches in
arrival order; sync equals eval's stream, async learns the same state beside the traffic;
snapshots are atomic, a kill -9 loses only what came after the last one, SIGTERM answers what is
in flight and snapshots."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from fewshot_world import prototypes_of, rotating_inverter
from fixtures_models import TINY_DIM
from negspace import TANL, TINS, AdaNeg, InterNeg, load_detector
from negspace.detectors.saved import write_provenance
from negspace.evaluation import EncodedSet, evaluate_stream, stream_order
from negspace.serve import ServeConfig, create_app
from negspace.serve.state import SnapshotStore, frozen_copy, read_meta
from negspace.testing import make_world
from serve_support import free_port, metric, start_process, thread_server

BATCH = 8


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world():
    return make_world(dim=TINY_DIM, n_classes=6, n_corpus=300, n_per_class=8, n_per_concept=12, seed=3)


def _adaneg(world) -> AdaNeg:
    _, negatives = world.negatives(120)
    return AdaNeg.from_features(world.id_text_features, negatives, groups=4)


def _tanl(world) -> TANL:
    noise = _unit(np.random.default_rng(1).standard_normal((15, world.dim)))
    return TANL.from_features(
        world.id_text_features, world.corpus_features, noise, queue_length=20, beta=60, otsu_window=200
    )


def _interneg(world) -> InterNeg:
    return InterNeg.from_features(
        world.id_text_features,
        world.corpus_features[:100],
        prototypes_of(world),
        beta=0.5,
        learned=20,
        groups=4,
        inverter=rotating_inverter(world, seed=11, strength=0.3),
    )


def _tins(world) -> TINS:
    return TINS.from_features(
        world.id_text_features,
        world.corpus_features[:100],
        prototypes_of(world),
        beta=0.5,
        learned=20,
        buffer=10,
        groups=4,
        inverter=rotating_inverter(world, seed=11, strength=0.3),
    )


MAKERS = {"adaneg": _adaneg, "tanl": _tanl, "interneg": _interneg, "tins": _tins}


def _stream(world):
    """eval's per-set stream of ID and far-OOD images: the sets, their shuffled order, its batches."""
    id_set = EncodedSet("id", world.id_image_features, [f"id{i}" for i in range(len(world.id_image_features))])
    ood = EncodedSet("far", world.far_ood_features, [f"far{i}" for i in range(len(world.far_ood_features))])
    features = np.concatenate([id_set.features, ood.features])
    order = stream_order(len(id_set.features), len(ood.features), seed=0)
    return id_set, ood, features, [order[s : s + BATCH] for s in range(0, len(order), BATCH)]


def _post_batches(url: str, features: np.ndarray, batches: list[np.ndarray]) -> np.ndarray:
    """One request per batch, one after another (each fills a batch of the server's max_batch)."""
    scores = np.empty(len(features))
    with httpx.Client(base_url=url, timeout=60) as http:
        for chunk in batches:
            response = http.post("/v1/score/features", json={"features": features[chunk].tolist()})
            assert response.status_code == 200, response.text
            scores[chunk] = [r["score"] for r in response.json()["results"]]
    return scores


def _config(**fields) -> ServeConfig:
    return ServeConfig(threshold=0.5, max_batch=BATCH, max_wait_ms=300, **fields)


@pytest.mark.parametrize("method", sorted(MAKERS))
def test_sync_serving_scores_the_stream_exactly_as_eval(world, method):
    """Batches sent in eval's order get eval's stream scores: the same code on the same batches."""
    id_set, ood, features, batches = _stream(world)
    reference = evaluate_stream(MAKERS[method](world), id_set, [ood], batch_size=BATCH, seed=0)
    expected = np.concatenate([reference.id_scores, reference.ood_scores["far"]])
    app = create_app(_config(adapt="sync"), MAKERS[method](world))
    with thread_server(app) as url:
        served = _post_batches(url, features, batches)
        state = httpx.get(f"{url}/v1/detector", timeout=60).json()["state"]
        metrics = httpx.get(f"{url}/metrics", timeout=60).text
    np.testing.assert_array_equal(served, expected)
    assert state["mode"] == "sync" and state["images_learned"] == len(features) and state["updates"] == len(batches)
    assert metric(metrics, "negspace_adaptive_images_learned") == len(features)
    learned = ("inverted", "n_learned") if method in ("interneg", "tins") else ("batches",)
    for quantity in learned:  # the state moved, and /metrics says so
        assert state["state"][quantity] > 0
        assert metric(metrics, f'negspace_detector_state{{quantity="{quantity}"}}') == state["state"][quantity]
    if "batches" in learned:
        assert state["state"]["batches"] == len(batches)


@pytest.mark.parametrize("method", ["adaneg", "interneg"])
def test_async_serving_learns_the_same_state_beside_the_traffic(world, tmp_path, method):
    """The first batch is scored by the state in effect (the initial one); the writer learns every
    batch in arrival order, ending in sync's state exactly; no request waits for it."""
    _, _, features, batches = _stream(world)
    ends = {}
    for mode in ("sync", "async"):
        app = create_app(_config(adapt=mode, state_dir=tmp_path / mode, snapshot_every=10_000), MAKERS[method](world))
        with thread_server(app) as url:
            served = _post_batches(url, features, batches)
            deadline = time.monotonic() + 120
            while (state := httpx.get(f"{url}/v1/detector", timeout=60).json()["state"]).get("pending_updates"):
                assert time.monotonic() < deadline, f"the writer never caught up: {state}"
                time.sleep(0.05)
            snapshot = httpx.post(f"{url}/v1/state/snapshot", timeout=60).json()
        ends[mode] = (served, state, tmp_path / mode / snapshot["snapshot"])
    initial = MAKERS[method](world)
    initial.freeze()
    first = batches[0]
    np.testing.assert_array_equal(ends["async"][0][first], initial.score_features(features[first]))
    assert not np.array_equal(ends["async"][0], ends["sync"][0])  # later batches: the state in effect lags
    state = ends["async"][1]
    assert state["mode"] == "async" and state["images_learned"] == len(features) and state["updates"] == len(batches)
    assert state["published_updates"] == len(batches) and state["pending_updates"] == 0
    learned = {mode: load_detector(ends[mode][2]) for mode in ends}
    _assert_same_state(learned["async"], learned["sync"])


def test_reset_returns_to_the_saved_state_and_counts_from_zero(world):
    _, _, features, batches = _stream(world)
    app = create_app(_config(adapt="sync"), _adaneg(world))
    with thread_server(app) as url:
        first = _post_batches(url, features, batches[:3])
        reset = httpx.post(f"{url}/v1/state/reset", timeout=60).json()
        again = _post_batches(url, features, batches[:3])
    assert reset["reset"] is True and reset["state"]["images_learned"] == 0 and reset["state"]["resets"] == 1
    chunk = np.concatenate(batches[:3])
    np.testing.assert_array_equal(again[chunk], first[chunk])


def test_a_frozen_copy_scores_with_the_state_it_was_taken_with(world):
    _, _, features, batches = _stream(world)
    for make in MAKERS.values():
        live = make(world)
        for chunk in batches[:3]:
            live.score_features(features[chunk])
        copy = frozen_copy(live)
        probe = features[batches[4]]
        live.freeze()
        now = live.score_features(probe)  # the live state, not learning from the probe
        live.unfreeze()
        before = copy.score_features(probe)
        np.testing.assert_array_equal(before, now)
        for chunk in batches[3:]:
            live.score_features(features[chunk])  # the live state moves on...
        np.testing.assert_array_equal(copy.score_features(probe), before)  # ...the copy does not
        assert copy.frozen and not live.frozen and copy.id_text_features is live.id_text_features


def test_a_removal_cut_short_never_leaves_a_snapshot_with_files_missing(world, tmp_path, monkeypatch):
    """Pruning removes an old snapshot file by file; a process killed midway must not leave a
    folder that still looks like a snapshot (its record there, its arrays gone)."""
    import shutil

    from negspace.serve import state as state_module

    identity = {"detector": "d", "model": "m"}
    store = SnapshotStore(tmp_path, identity)
    detector = _adaneg(world)
    for _ in range(2):
        store.write(detector, {})
    real_rmtree = shutil.rmtree

    def killed_after_one_file(path, ignore_errors=False):  # the process dies while removing a snapshot
        arrays = sorted(Path(path).glob("*.npy"))
        if not arrays:
            return real_rmtree(path, ignore_errors=ignore_errors)
        arrays[0].unlink()
        raise SystemExit("killed")

    monkeypatch.setattr(state_module.shutil, "rmtree", killed_after_one_file)
    with pytest.raises(SystemExit):
        store.write(detector, {})  # the third: the first is pruned, and the kill lands
    monkeypatch.setattr(state_module.shutil, "rmtree", real_rmtree)
    store.close()
    left = sorted(p.name for p in tmp_path.glob("snapshot-*"))
    assert left == ["snapshot-00000002", "snapshot-00000003"]
    for name in left:  # what a reader sees right after the kill: whole snapshots only
        load_detector(tmp_path / name)
    SnapshotStore(tmp_path, identity).close()
    assert not list(tmp_path.glob(".tmp-*"))  # the half-removed folder is cleared on the next start


def test_adapt_is_refused_for_a_detector_that_does_not_learn(world, tmp_path):
    from negspace import NegLabel, NegspaceError

    _, negatives = world.negatives(60)
    with pytest.raises(NegspaceError, match="does not learn"):
        create_app(_config(adapt="sync"), NegLabel.from_features(world.id_text_features, negatives, groups=4))


@pytest.mark.parametrize("behaviour", ["good", "none"])
def test_ants_learns_beside_the_traffic_and_its_mllm_failures_are_counted(behaviour):
    """ANTS adapts asynchronously by default (its updates ask an MLLM): the banks grow while the
    requests are answered; an MLLM whose every request fails is counted in /v1/detector and
    /metrics, and the server keeps answering."""
    from negspace import ANTS
    from negspace.testing import WorldMLLM, WorldTextEncoder, world_stream

    ants_world = make_world(dim=128, n_corpus=600, n_per_class=10, n_per_concept=30, seed=0)
    labels, corpus = ants_world.negatives(500)
    detector = ANTS.from_features(
        ants_world.id_text_features,
        corpus,
        WorldTextEncoder(ants_world),
        WorldMLLM(ants_world, behaviour),
        ants_world.class_names,
        neg_labels=labels,
        min_candidates=20,
        vsnl_start=1,
        vsnl_every=2,
        groups=10,
        delta=0.25,
    )
    batches, _ = world_stream(ants_world, "far", batch_size=50)
    app = create_app(ServeConfig(threshold=0.5, max_batch=50, max_wait_ms=50, adapt="auto"), detector)
    with thread_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        for batch in batches:
            assert http.post("/v1/score/features", json={"features": batch.features.tolist()}).status_code == 200
        deadline = time.monotonic() + 120
        while (info := http.get("/v1/detector").json())["state"]["pending_updates"]:
            assert time.monotonic() < deadline, f"the writer never caught up: {info['state']}"
            time.sleep(0.05)
        explained = http.post(
            "/v1/score/features", params={"explain": 3}, json={"features": batches[0].features[:4].tolist()}
        ).json()["results"]
        metrics = http.get("/metrics").text
    state = info["state"]["state"]
    assert info["adapt_mode"] == "async" and info["state"]["updates"] == len(batches)
    assert state["mllm_requests"] > 0
    if behaviour == "good":
        assert state["vsnl_size"] > 0 and state["mllm_failed_answers"] == 0
        assert metric(metrics, 'negspace_detector_state{quantity="vsnl_size"}') == state["vsnl_size"]
    else:
        assert state["vsnl_size"] == 0 and state["mllm_failed_answers"] == state["mllm_requests"]
        assert metric(metrics, 'negspace_detector_state{quantity="mllm_failed_answers"}') > 0
    assert all(0 < len(r["explanation"]) <= 3 for r in explained)
    assert {e["source"] for r in explained for e in r["explanation"]} <= {"ens", "vsnl", "corpus"}


def _assert_same_state(a, b) -> None:
    saved_a, saved_b = a.to_saved(), b.to_saved()
    assert saved_a.arrays.keys() == saved_b.arrays.keys()
    for name in saved_a.arrays:
        np.testing.assert_array_equal(saved_a.arrays[name], saved_b.arrays[name], err_msg=name)
    assert saved_a.extra == saved_b.extra


# ------------------------------------------------------------------------------ a real process


@pytest.fixture(scope="module")
def saved_adaneg(world, tmp_path_factory, tiny_openclip):
    """An AdaNeg detector of the world's 32-dim features, saved with the tiny model as its model."""
    folder = tmp_path_factory.mktemp("served") / "det"
    _adaneg(world).save(folder)
    write_provenance(
        folder,
        {
            "method": "adaneg",
            "model": tiny_openclip.spec,
            "weights": str(tiny_openclip.weights),
            "threshold_95_id_recall": 0.5,
        },
    )
    return folder


def _snapshot_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


def test_kill_9_then_restart_resumes_the_last_snapshot_and_sigterm_answers_in_flight_then_snapshots(
    world, saved_adaneg, tmp_path
):
    state_dir = tmp_path / "state"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        "--detector",
        str(saved_adaneg),
        "--adapt",
        "sync",
        "--state-dir",
        str(state_dir),
        "--snapshot-every",
        "8",
        "--max-batch",
        str(BATCH),
        "--device",
        "cpu",
    ]
    _, _, features, batches = _stream(world)
    process = start_process([*args, "--max-wait-ms", "5"], port, timeout=180)
    stop = threading.Event()

    def traffic() -> None:  # one client, batch after batch, until the server dies under it
        with httpx.Client(base_url=url, timeout=60) as http:
            for k in range(10_000):
                if stop.is_set():
                    return
                try:
                    http.post("/v1/score/features", json={"features": features[batches[k % len(batches)]].tolist()})
                except httpx.HTTPError:
                    return

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        for _ in range(600):  # snapshots every batch: a kill lands while one is being written, often
            if httpx.get(f"{url}/v1/detector", timeout=60).json()["state"]["snapshots_written"] >= 6:
                break
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        stop.set()
        sender.join(30)
    snapshots = sorted(state_dir.glob("snapshot-*"))
    assert 1 <= len(snapshots) <= 3  # the two newest are kept (three when killed before the oldest was removed)
    for snapshot in snapshots:  # every snapshot left loads, none half-written
        assert read_meta(snapshot) is not None
        load_detector(snapshot)
    last = snapshots[-1]
    learned_then = read_meta(last)["images_learned"]

    process = start_process([*args, "--max-wait-ms", "5000"], port, timeout=180)
    try:
        info = httpx.get(f"{url}/v1/detector", timeout=60).json()["state"]
        assert info["images_learned"] == learned_then  # resumed where the last snapshot was
        assert len(list(state_dir.glob("snapshot-*"))) <= 2
        resumed = httpx.post(f"{url}/v1/state/snapshot", timeout=60).json()["snapshot"]
        old, new = _snapshot_arrays(last), _snapshot_arrays(state_dir / resumed)
        assert old.keys() == new.keys()
        for name in old:
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)
        # SIGTERM while requests wait in the queue: they are answered, then the state is snapshotted
        with ThreadPoolExecutor(3) as pool:
            rows = [features[batches[k]][:2].tolist() for k in range(3)]  # 6 rows: less than a batch
            waiting = [
                pool.submit(httpx.post, f"{url}/v1/score/features", json={"features": r}, timeout=60) for r in rows
            ]
            deadline = time.monotonic() + 60  # all 6 rows at the server, queued or scored (not a fixed sleep)
            while time.monotonic() < deadline:
                page = httpx.get(f"{url}/metrics", timeout=60).text
                if metric(page, "negspace_queue_rows") + metric(page, "negspace_images_total", 'outcome="scored"') == 6:
                    break
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in waiting]
        # uvicorn re-raises the signal once shut down: the exit says "ended by SIGTERM", as it was
        assert process.wait(60) in (0, -signal.SIGTERM)
        assert "stopped: 6 images scored" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert [a.status_code for a in answers] == [200, 200, 200]
    final = sorted(state_dir.glob("snapshot-*"))[-1]
    assert read_meta(final)["images_learned"] == learned_then + 6
    load_detector(final)
    assert not list(state_dir.glob(".tmp-*"))
    assert json.loads((final / "serve_state.json").read_text())["identity"]["digest"].startswith("sha256:")
