"""`GET /metrics`: the server's metrics in the Prometheus text format (prometheus-client).

Counted by this process: events received, accepted, duplicates and invalid; requests by
route, method and status; request and commit latency; failed commit attempts. Read when
scraped: queue depth, whether the writer can write, and the store's own totals (every
process's, across restarts). Each app has a registry of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logagg.store import BatchResult, StoreStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
UNMATCHED = "unmatched"  # the route label of a path no route serves (bounded cardinality)
DISCONNECTED = "499"  # the status label of a request whose client went away first
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _StoreTotals(Collector):
    """The store's counters, read when scraped; nothing when the store cannot be read."""

    def __init__(self, read: Callable[[], StoreStats]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "logagg_store_up", "1 when the store could be read for this scrape, else 0."
        )
        try:
            stats = self.read()
        except Exception:  # an unreadable store is a metric, not a failed scrape
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        counters = stats.counters
        for name, value, what in (
            ("received", counters.received, "Events received"),
            ("accepted", counters.accepted, "Events stored (unique)"),
            ("duplicates", counters.duplicates, "Duplicate events dropped"),
            ("invalid", counters.invalid, "Invalid events refused"),
        ):
            family = CounterMetricFamily(
                f"logagg_store_events_{name}",
                f"{what} by every process writing the store, across restarts.",
            )
            family.add_metric([], float(value))
            yield family
        topics = GaugeMetricFamily("logagg_store_topics", "Topics in the store.")
        topics.add_metric([], float(len(stats.topics)))
        yield topics


class Metrics:
    """The metrics of one server, and `render()` for `GET /metrics`."""

    def __init__(
        self,
        queue_depth: Callable[[], int],
        writer_up: Callable[[], bool],
        store_stats: Callable[[], StoreStats],
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "logagg_events_received", "Events received by this process.", registry=registry
        )
        self.accepted = Counter(
            "logagg_events_accepted", "Events this process stored (new).", registry=registry
        )
        self.duplicates = Counter(
            "logagg_events_duplicates",
            "Duplicate events this process dropped (already stored).",
            registry=registry,
        )
        self.invalid = Counter(
            "logagg_events_invalid", "Invalid events this process refused.", registry=registry
        )
        self.requests = Counter(
            "logagg_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "logagg_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_latency = Histogram(
            "logagg_commit_duration_seconds",
            "Time one store transaction took to commit.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_failures = Counter(
            "logagg_commit_failures",
            "Commit attempts (or store reopenings) that failed; the writer retries them.",
            registry=registry,
        )
        depth = Gauge("logagg_queue_depth", "Batches waiting for the writer.", registry=registry)
        depth.set_function(lambda: float(queue_depth()))
        up = Gauge(
            "logagg_writer_up",
            "1 while the writer can write, 0 while it cannot.",
            registry=registry,
        )
        up.set_function(lambda: 1.0 if writer_up() else 0.0)
        registry.register(_StoreTotals(store_stats))

    def events(self, received: int, result: BatchResult) -> None:
        """Count the events of one answered publish."""
        self.received.inc(received)
        self.accepted.inc(result.accepted)
        self.duplicates.inc(result.duplicates)
        self.invalid.inc(result.invalid)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by route template, method and status,
    and times it (refused ones too: it wraps everything else)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = DISCONNECTED

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.requests.labels(route, method, status).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - began)
