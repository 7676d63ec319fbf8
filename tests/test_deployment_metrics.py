"""One /metrics page for the replicas of a Ray Serve deployment: the hub keeps each replica's
latest page and forgets the silent ones; the merged page keeps every sample, labelled with its
replica; a replica's share works against a real hub actor on a local Ray, and says so when the
hub is gone. (The deployment itself, two replicas behind Serve's proxy: tests/test_serve_ray.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from external_tools import require_module
from negspace.serve.deployment_metrics import MetricsHub, ReplicaMetrics, merged_page, start_hub, stop_hub


def _page(requests: int, latencies: list[float]) -> tuple[CollectorRegistry, bytes]:
    registry = CollectorRegistry()
    counter = Counter("negspace_requests", "HTTP requests by route", ["route"], registry=registry)
    counter.labels("/v1/score").inc(requests)
    histogram = Histogram("negspace_latency_seconds", "Latency", buckets=(0.1, 1.0), registry=registry)
    for seconds in latencies:
        histogram.observe(seconds)
    return registry, generate_latest(registry)


def _samples(page: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_merged_page_keeps_every_replicas_samples_labelled_once_per_family():
    _, first = _page(3, [0.05, 0.5])
    _, second = _page(5, [2.0])
    merged = merged_page({"r2": second, "r1": first})
    samples = _samples(merged)
    assert samples[("negspace_requests_total", (("replica", "r1"), ("route", "/v1/score")))] == 3
    assert samples[("negspace_requests_total", (("replica", "r2"), ("route", "/v1/score")))] == 5
    assert samples[("negspace_latency_seconds_bucket", (("le", "1.0"), ("replica", "r1")))] == 2
    assert samples[("negspace_latency_seconds_bucket", (("le", "1.0"), ("replica", "r2")))] == 0
    assert samples[("negspace_latency_seconds_count", (("replica", "r2"),))] == 1
    # every sample of each page is there, and nothing else
    expected = {
        (name, tuple(sorted({**dict(labels), "replica": r}.items())))
        for r, page in (("r1", first), ("r2", second))
        for name, labels in _samples(page)
    }
    assert set(samples) == expected
    text = merged.decode()
    assert text.count("# TYPE negspace_requests_total counter") == 1
    assert text.count("# TYPE negspace_latency_seconds histogram") == 1


def test_the_hub_keeps_the_latest_page_and_forgets_a_silent_replica():
    now = [100.0]
    hub = MetricsHub(stale_seconds=30, clock=lambda: now[0])
    hub.put("a", b"old")
    hub.put("b", b"b1")
    now[0] += 20
    hub.put("a", b"new")
    assert hub.pages() == {"a": b"new", "b": b"b1"}
    now[0] += 15  # b silent for 35 s: gone; a heard 15 s ago
    assert hub.pages() == {"a": b"new"}
    hub.put("b", b"b2")  # heard again: back
    assert hub.pages() == {"a": b"new", "b": b"b2"}


def test_a_replicas_share_merges_through_a_real_hub_and_falls_back_to_its_own_when_the_hub_is_gone():
    ray = require_module("ray", extra="ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    stops: list = []
    try:
        hub = start_hub()
        _, other = _page(7, [0.2])
        ray.get(hub.put.remote("other", other))
        registry, _ = _page(2, [0.01])
        errors = Counter("negspace_errors", "Refused or failed requests by kind", ["kind"], registry=registry)
        share = ReplicaMetrics(hub, "me", registry, on_failure=errors.labels("metrics_hub").inc, push_seconds=0.05)
        stops.append(share.stop)
        share.start()
        _wait_for(ray, hub, "me")  # its pushes reach the hub
        Counter("negspace_extra", "made after the last push", registry=registry).inc(4)
        samples = _samples(asyncio.run(share.page()))
        assert samples[("negspace_requests_total", (("replica", "other"), ("route", "/v1/score")))] == 7
        assert samples[("negspace_requests_total", (("replica", "me"), ("route", "/v1/score")))] == 2
        assert samples[("negspace_extra_total", (("replica", "me"),))] == 4  # its own page as of the scrape
        failed = ("negspace_errors_total", (("kind", "metrics_hub"), ("replica", "me")))
        assert samples[failed] == 0
        stop_hub()
        alone = _samples(asyncio.run(share.page()))
        assert {dict(labels)["replica"] for _, labels in alone} == {"me"}  # its own, still labelled
        assert alone[("negspace_extra_total", (("replica", "me"),))] == 4
        assert alone[failed] == 1  # the failure counted, on the page it made
    finally:
        for stop in stops:
            stop()
        if started:
            ray.shutdown()


def _wait_for(ray, hub, replica: str) -> None:
    deadline = time.monotonic() + 60
    while replica not in ray.get(hub.pages.remote()):
        if time.monotonic() > deadline:
            pytest.fail(f"{replica}'s pushes never reached the hub")
        time.sleep(0.05)
