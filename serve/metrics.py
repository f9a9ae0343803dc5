"""The service's Prometheus metrics, in a registry of its own (one per app).

``GET /metrics`` exposes them in the Prometheus text format. Names:

- ``marketplace_requests_total{route, method, status}``
- ``marketplace_request_seconds{route}`` (histogram)
- ``marketplace_batch_size`` (histogram of images per forward pass)
- ``marketplace_inference_seconds`` (histogram of forward passes)
- ``marketplace_predictions_total{category}``
- ``marketplace_model_info{name, version, engine}`` (1 for the version served)
- ``marketplace_model_loaded`` (1 once a model is served)
- ``marketplace_reloads_total`` and ``marketplace_reload_failures_total``
- ``marketplace_batcher_restarts_total`` (the batcher crashed and was restarted)
- ``marketplace_dropped_images_total`` (images not run: their request timed out or left)
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
            "The version served (1) with its engine",
            ["name", "version", "engine"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "marketplace_model_loaded", "1 once a model is served", registry=r
        )
        self.reloads = Counter("marketplace_reloads", "Versions loaded and swapped in", registry=r)
        self.reload_failures = Counter(
            "marketplace_reload_failures", "Versions that failed to load or answer", registry=r
        )
        self.batcher_restarts = Counter(
            "marketplace_batcher_restarts", "Batcher crashes (each restarted)", registry=r
        )
        self.dropped_images = Counter(
            "marketplace_dropped_images",
            "Images dropped before their forward pass (request timed out or client left)",
            registry=r,
        )

    def served(self, name: str | None, version: str, engine: str) -> None:
        """Record that ``version`` is now the one served."""
        self.model_info.clear()
        self.model_info.labels(name or "", version, engine).set(1)
        self.model_loaded.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
