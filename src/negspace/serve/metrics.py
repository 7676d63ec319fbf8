"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own per app (two apps
in one process never share counters), and the short history the live page draws.

Counters: requests by route and outcome, images by outcome, OOD flags, errors by kind, adaptive
updates and their failures, snapshots. Histograms: request latency, batch size. Gauges: the queue,
and an adaptive detector's state (``negspace_detector_state{quantity=...}``: bank sizes, ``lam``,
MLLM requests and failures, ...), read from counters the scorer keeps. Nothing a request carried
(names, images, tokens) is a label.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HISTORY = 600  # points the live page can draw (one per second: ten minutes)
RECENT = 1000  # images the recent OOD share is computed over


class ServeMetrics:
    """Every metric of one app, and the history of the live page."""

    def __init__(self, max_batch: int, state: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "negspace_requests", "HTTP requests by route and outcome", ["route", "outcome"], registry=r
        )
        self.images = Counter("negspace_images", "Images (or feature rows) by outcome", ["outcome"], registry=r)
        self.ood = Counter("negspace_ood_images", "Images flagged OOD (score below the threshold)", registry=r)
        self.errors = Counter("negspace_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.latency = Histogram(
            "negspace_request_latency_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch})
        self.batch_size = Histogram(
            "negspace_batch_size", "Rows per model batch", buckets=[b for b in buckets if b <= max_batch], registry=r
        )
        self.encode_seconds = Counter("negspace_encode_seconds", "Seconds the worker spent encoding", registry=r)
        self.score_seconds = Counter(
            "negspace_score_seconds", "Seconds the worker spent scoring (and learning, in sync mode)", registry=r
        )
        self.queue = Gauge("negspace_queue_rows", "Rows waiting for the model", registry=r)
        self.ood_share = Gauge(
            "negspace_ood_share_recent", f"Share of the last {RECENT} images flagged OOD", registry=r
        )
        self._state = state
        r.register(_StateCollector(state))
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque(maxlen=RECENT)
        self._latencies: deque[float] = deque(maxlen=RECENT)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._second = 0
        self._window: dict[str, Any] = {}
        self.totals = {"scored": 0, "ood": 0}
        self.queued = lambda: 0  # rows waiting (the app points it at its batcher)
        self.deployment: Any = None  # on Ray Serve: the ReplicaMetrics that makes /metrics the deployment's

    def scored(self, flags: list[bool]) -> None:
        """Count a request's images and their OOD flags."""
        n_ood = sum(flags)
        self.images.labels("scored").inc(len(flags))
        self.ood.inc(n_ood)
        with self._lock:
            self.totals["scored"] += len(flags)
            self.totals["ood"] += n_ood
            self._recent.extend(flags)
            share = sum(self._recent) / len(self._recent) if self._recent else 0.0
            self._tick()
            self._window["images"] = self._window.get("images", 0) + len(flags)
            self._window["ood"] = self._window.get("ood", 0) + n_ood
        self.ood_share.set(share)

    def request(self, route: str, outcome: str, seconds: float, kind: str | None = None) -> None:
        self.requests.labels(route, outcome).inc()
        self.latency.labels(route).observe(seconds)
        if kind is not None:
            self.errors.labels(kind).inc()
        with self._lock:
            self._latencies.append(seconds)
            self._tick()
            self._window.setdefault("latencies", []).append(seconds)

    def batch(self, rows: int, encode: float, score: float) -> None:
        self.batch_size.observe(rows)
        self.encode_seconds.inc(encode)
        self.score_seconds.inc(score)

    def _tick(self) -> None:
        """Close the history's point of the past second (caller holds the lock)."""
        now = int(time.time())
        if now == self._second:
            return
        if self._window:
            self.history.append(self._point())
        self._second, self._window = now, {}

    def _point(self) -> dict[str, Any]:
        """The history's point of the current second's window (caller holds the lock)."""
        latencies = sorted(self._window.get("latencies", []))
        images = self._window.get("images", 0)
        return {
            "t": self._second,
            "images": images,
            "ood_share": self._window.get("ood", 0) / images if images else None,
            "p50_ms": _quantile_ms(latencies, 0.5),
            "p99_ms": _quantile_ms(latencies, 0.99),
            "state": self._state().get("state", {}),
        }

    def summary(self) -> dict[str, Any]:
        """The live page's data: totals, the recent OOD share and latency, the history."""
        with self._lock:
            self._tick()
            latencies = sorted(self._latencies)
            recent = list(self._recent)
            # the second still open counts too: the page shows traffic at once, not a second late
            history = list(self.history) + ([self._point()] if self._window else [])
            totals = dict(self.totals)
        return {
            "images_scored": totals["scored"],
            "ood_images": totals["ood"],
            "ood_share_recent": sum(recent) / len(recent) if recent else None,
            "latency_ms_p50": _quantile_ms(latencies, 0.5),
            "latency_ms_p99": _quantile_ms(latencies, 0.99),
            "queue_rows": self.queued(),
            "adaptive": self._state(),
            "history": history,
        }


def _quantile_ms(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted seconds, in milliseconds (``None`` without any)."""
    if not ordered:
        return None
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _StateCollector:
    """``negspace_detector_state{quantity}`` and the adaptive counters, read at each scrape."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Any:
        counters = self.state()
        if not counters:
            return
        gauge = GaugeMetricFamily("negspace_detector_state", "An adaptive detector's state now", labels=["quantity"])
        for name, value in sorted(counters.get("state", {}).items()):
            gauge.add_metric([name], value)
        yield gauge
        for name, help_text in (
            ("images_learned", "Images the adaptive detector learned from"),
            ("updates", "Batches the adaptive detector learned from"),
            ("snapshots_written", "Snapshots of the adaptive state written"),
            ("snapshot_failures", "Snapshots that failed"),
            ("pending_updates", "Batches waiting for the writer (async)"),
        ):
            if name in counters:
                family = GaugeMetricFamily(f"negspace_adaptive_{name}", help_text)
                family.add_metric([], float(counters[name]))
                yield family
        failures = GaugeMetricFamily("negspace_adaptive_update_failures", "Failed updates by kind", labels=["kind"])
        for kind, count in sorted(counters.get("update_failures", {}).items()):
            failures.add_metric([kind], float(count))
        yield failures
