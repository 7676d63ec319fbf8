"""One ``/metrics`` page for all the replicas of a Ray Serve deployment.

Each replica runs the one-process app, with its own counters. Through Serve's proxy, a scrape
reaches one replica at a time: alone, its page would show that replica's counters, and
Prometheus, seeing the figures jump from one replica's to another's, would read each drop as a
counter reset. So every replica sends its page to one small Ray actor, the hub, every
:data:`PUSH_SECONDS`; the replica that answers a scrape sends its own first, then gives the pages
of every live replica, each sample labelled ``replica`` (sum them in PromQL). Another replica's
figures are at most :data:`PUSH_SECONDS` old; a replica silent for :data:`STALE_SECONDS`
(stopped, or replaced by Serve) is left out.

The hub is made by :func:`negspace.serve.ray_serve.deploy` and removed with the replicas; a
replica that finds no hub (an application run with ``serve.run`` by hand) shows its own
page, as one process does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

PUSH_SECONDS = 2.0
STALE_SECONDS = 30.0
HUB_TIMEOUT_SECONDS = 5.0  # a scrape never waits longer for a hub that does not answer
HUB_NAME = "negspace-metrics-hub"
HUB_NAMESPACE = "negspace"
REPLICA_LABEL = "replica"


class MetricsHub:
    """The latest ``/metrics`` page of each replica (a Ray actor in a deployment)."""

    def __init__(self, stale_seconds: float = STALE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_seconds = stale_seconds
        self.clock = clock
        self._pages: dict[str, tuple[float, bytes]] = {}

    def put(self, replica: str, page: bytes) -> None:
        """Keep ``page`` as ``replica``'s latest."""
        self._pages[replica] = (self.clock(), page)

    def pages(self) -> dict[str, bytes]:
        """The latest page of every replica heard from within ``stale_seconds`` (the others are
        forgotten: a replica gone for good never comes back under the same name)."""
        now = self.clock()
        self._pages = {name: kept for name, kept in self._pages.items() if now - kept[0] <= self.stale_seconds}
        return {name: page for name, (_, page) in self._pages.items()}


def merged_page(pages: Mapping[str, bytes]) -> bytes:
    """One Prometheus text page from several replicas' pages: one family per metric, each sample
    labelled with its replica."""
    families: dict[str, Metric] = {}
    for replica, page in sorted(pages.items()):
        for family in text_string_to_metric_families(page.decode("utf-8")):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples.extend(
                Sample(s.name, {REPLICA_LABEL: replica, **s.labels}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families:
    """A collector that gives families already made."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class ReplicaMetrics:
    """One replica's share: its page sent to the hub every ``push_seconds`` (a daemon thread),
    and the deployment's page for a scrape it answers."""

    def __init__(
        self,
        hub: Any,
        replica: str,
        registry: CollectorRegistry,
        on_failure: Callable[[], None],
        push_seconds: float = PUSH_SECONDS,
    ) -> None:
        self.hub, self.replica, self.registry = hub, replica, registry
        self.on_failure = on_failure
        self.push_seconds = push_seconds
        self._warned = False
        self._stopped = threading.Event()

    def start(self) -> None:
        """Push this replica's page now and every ``push_seconds`` until :meth:`stop`."""
        threading.Thread(target=self._push, name="negspace-metrics-push", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _push(self) -> None:
        while not self._stopped.is_set():
            try:
                self.hub.put.remote(self.replica, generate_latest(self.registry))  # not awaited: never blocks
            except Exception as err:  # noqa: BLE001 - a push that fails is retried at the next
                log.debug("metrics push failed: %s", err)
            self._stopped.wait(self.push_seconds)

    async def page(self) -> bytes:
        """Every live replica's samples, this one's as of now; this replica's alone (counted in
        ``negspace_errors{kind="metrics_hub"}`` and logged) where the hub does not answer."""
        own = generate_latest(self.registry)
        try:
            await asyncio.wait_for(self.hub.put.remote(self.replica, own), HUB_TIMEOUT_SECONDS)
            pages = await asyncio.wait_for(self.hub.pages.remote(), HUB_TIMEOUT_SECONDS)
        except Exception as err:  # noqa: BLE001 - any Ray failure: this replica's figures, said so
            self.on_failure()
            if not self._warned:
                log.warning("the metrics hub did not answer (%s): /metrics shows this replica alone", err)
                self._warned = True
            return merged_page({self.replica: generate_latest(self.registry)})  # with this failure counted
        return merged_page({**pages, self.replica: own})


def start_hub() -> Any:
    """The deployment's hub (a named actor, taking no CPU), or the one already running under
    that name. Detached: it lives on when the caller drops its handle, until :func:`stop_hub`
    (or the end of the Ray it runs on)."""
    import ray

    hub_class = ray.remote(num_cpus=0)(MetricsHub)
    options = {"name": HUB_NAME, "namespace": HUB_NAMESPACE, "get_if_exists": True, "lifetime": "detached"}
    return hub_class.options(**options).remote()


def find_hub() -> Any | None:
    """The deployment's hub, or ``None`` where none runs or Ray cannot say (metrics never stop
    a replica from serving)."""
    import ray

    try:
        return ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE)
    except ValueError:  # no actor of that name
        return None
    except Exception as err:  # noqa: BLE001 - logged; the replica serves with its own page
        log.warning("the metrics hub could not be looked up (%s)", err)
        return None


def stop_hub() -> None:
    """End the hub (the replicas are gone already); a failure is logged, never raised, so that
    the replicas' removal and Ray's shutdown go on (a hub left on a cluster is reused)."""
    import ray

    try:
        hub = find_hub()
        if hub is not None:
            ray.kill(hub)
    except Exception as err:  # noqa: BLE001
        log.warning("the metrics hub could not be removed (%s)", err)
