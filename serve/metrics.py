"""The service's Prometheus metrics, in a registry of its own (one per app).

``GET /metrics`` exposes them in the Prometheus text format. Names:

- ``marketplace_requests_total{route, method, status}``
- ``marketplace_request_seconds{route}`` (histogram)
- ``marketplace_batch_size`` (histogram of images per forward pass)
- ``marketplace_inference_seconds`` (histogram of forward passes)
- ``marketplace_predictions_total{category}``
- ``marketplace_model_info{kind, name, version, engine}`` (1 for the version each slot serves)
- ``marketplace_model_loaded{kind}`` (1 while the slot serves a version, else 0)
- ``marketplace_reloads_total{kind}`` and ``marketplace_reload_failures_total{kind}``
- ``marketplace_batcher_restarts_total`` (the batcher crashed and was restarted)
- ``marketplace_dropped_images_total`` (images not run: their request timed out or left)
- ``marketplace_searches_total{ranking}`` (searches answered, by the ranking they used:
  ``learned``, ``blend`` or ``photo``)
- ``marketplace_ranker_failures_total`` (ranked searches the learned ranker failed to
  answer: they fell back to the blend)

``kind`` is the slot: ``image``, ``text``, ``image+text`` or ``ranking`` (``registry.kinds``,
``serve.ranking``), so one alert rule per slot works
(``marketplace_model_loaded{kind="image"} == 0``).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Every metric the service keeps."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "marketplace_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "marketplace_request_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "marketplace_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "marketplace_inference_seconds",
            "Time of one forward pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "marketplace_predictions", "Images classified, by category", ["category"], registry=r
        )
        self.model_info = Gauge(
            "marketplace_model_info",
            "The version each slot serves (1) with its engine",
            ["kind", "name", "version", "engine"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "marketplace_model_loaded", "1 while the slot serves a version", ["kind"], registry=r
        )
        self.reloads = Counter(
            "marketplace_reloads", "Versions loaded and swapped in", ["kind"], registry=r
        )
        self.reload_failures = Counter(
            "marketplace_reload_failures",
            "Versions that failed to load or answer",
            ["kind"],
            registry=r,
        )
        self.batcher_restarts = Counter(
            "marketplace_batcher_restarts", "Batcher crashes (each restarted)", registry=r
        )
        self.dropped_images = Counter(
            "marketplace_dropped_images",
            "Images dropped before their forward pass (request timed out or client left)",
            registry=r,
        )
        self.searches = Counter(
            "marketplace_searches",
            "Searches answered, by the ranking used (learned, blend, photo)",
            ["ranking"],
            registry=r,
        )
        self.ranker_failures = Counter(
            "marketplace_ranker_failures",
            "Ranked searches the learned ranker failed (answered by the blend)",
            registry=r,
        )
        self._info: dict[str, tuple[str, ...]] = {}  # kind -> its model_info labels

    def slot(self, kind: str) -> None:
        """Show the slot ``kind`` from the start: not loaded, nothing reloaded or failed."""
        self.model_loaded.labels(kind).set(0)
        self.reloads.labels(kind)
        self.reload_failures.labels(kind)

    def served(self, kind: str, name: str | None, version: str, engine: str) -> None:
        """Record that the slot ``kind`` now serves ``version`` (the other slots keep theirs)."""
        previous = self._info.pop(kind, None)
        if previous is not None:
            self.model_info.remove(*previous)
        labels = (kind, name or "", version, engine)
        self.model_info.labels(*labels).set(1)
        self._info[kind] = labels
        self.model_loaded.labels(kind).set(1)
        self.reloads.labels(kind).inc()

    def failed(self, kind: str) -> None:
        """Count a version of the slot ``kind`` that failed to load or to answer."""
        self.reload_failures.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
