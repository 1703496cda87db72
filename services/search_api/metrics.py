"""Prometheus metrics of the search service (prometheus-client, one registry per app).

* ``rd_http_requests_total{endpoint, mode, status}``: requests answered.
* ``rd_http_request_duration_seconds{endpoint, mode, status}``: latency histogram (seconds,
  from the first byte the app sees to the last byte it sends).
* ``rd_index_version_info{mode, version}``: 1 for the version each mode serves.
* ``rd_index_loaded{mode}``: 1 when the mode has a loaded, warmed index.
* ``rd_index_docs{mode}``: documents in the served version.
* ``rd_index_reloads_total{mode, outcome}``: reloads (``swapped``, ``unchanged``, ``failed``).
* ``rd_encoder_batch_size{mode}`` / ``rd_encoder_batch_seconds{mode}``: micro-batches.
* ``rd_search_in_flight``: ``/search`` requests whose body has arrived and that have no hits
  yet (what the micro-batcher waits for; clients still sending a body are not counted).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Paths reported as their own ``endpoint`` label; anything else is ``other`` (bounded cardinality).
KNOWN_ENDPOINTS = frozenset(
    ["/search", "/search/batch", "/healthz", "/readyz", "/metrics", "/index", "/admin/reload", "/openapi.json"]
)


class ServiceMetrics:
    """The service's metric objects in their own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("endpoint", "mode", "status")
        self.requests = Counter("rd_http_requests", "HTTP requests answered", labels, registry=self.registry)
        self.latency = Histogram(
            "rd_http_request_duration_seconds", "HTTP request latency (seconds)", labels,
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.version = Gauge("rd_index_version_info", "index version served (1)", ("mode", "version"), registry=self.registry)
        self.loaded = Gauge("rd_index_loaded", "1 when the mode has a loaded, warm index", ("mode",), registry=self.registry)
        self.docs = Gauge("rd_index_docs", "documents in the served index version", ("mode",), registry=self.registry)
        self.reloads = Counter("rd_index_reloads", "index reloads", ("mode", "outcome"), registry=self.registry)
        self.batch_size = Histogram(
            "rd_encoder_batch_size", "queries per encoder micro-batch", ("mode",), buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "rd_encoder_batch_seconds", "seconds per encoder micro-batch (encode + search)", ("mode",),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge(
            "rd_search_in_flight", "/search requests with a complete body and no hits yet", registry=self.registry
        )
        self._served: dict[str, str] = {}

    def set_version(self, mode: str, version: str, docs: int) -> None:
        old = self._served.get(mode)
        if old is not None and old != version:
            try:
                self.version.remove(mode, old)
            except KeyError:  # pragma: no cover - already removed
                pass
        self._served[mode] = version
        self.version.labels(mode, version).set(1)
        self.loaded.labels(mode).set(1)
        self.docs.labels(mode).set(docs)

    def observe(self, endpoint: str, mode: str, status: int, started: float) -> None:
        ep = endpoint if endpoint in KNOWN_ENDPOINTS else "other"
        labels = (ep, mode or "", str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(time.perf_counter() - started)
