"""Prometheus metrics of one server, in a registry of its own (two servers in one process never mix counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

# Seconds; from a cached tiny-model batch (~1 ms) to a slow 7B generation (minutes).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """Requests, verdicts, per-stage latency, batch sizes, queue depth, pixels in flight and errors of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "psaguard_requests",
            "HTTP requests answered, by endpoint and status code.",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.verdicts = Counter(
            "psaguard_verdicts",
            "Verdicts given, by action and risk type code.",
            ("action", "type"),
            registry=self.registry,
        )
        self.response_verdicts = Counter(
            "psaguard_response_verdicts",
            "Answer verdicts given, by response action and risk type code.",
            ("action", "type"),
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "psaguard_stage_seconds",
            "Latency of each stage: decode (images), queue (wait for a batch), classify (the batch's forward "
            "pass), generate (local mode), upstream (proxy mode), response (judging an answer: proxy mode, moderated "
            "conversations), total (until the response starts: the whole "
            "request unless streamed).",
            ("stage",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "psaguard_batch_size", "Requests per classify call.", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("psaguard_queue_depth", "Requests waiting for the classifier.", registry=self.registry)
        self.pixels_in_flight = Gauge(
            "psaguard_pixels_in_flight", "Image pixels charged to the in-flight budget.", registry=self.registry
        )
        self.errors = Counter("psaguard_errors", "Error responses, by error code.", ("code",), registry=self.registry)

    def verdict(self, verdict: SafetyVerdict) -> None:
        self.verdicts.labels(action=verdict.action, type=verdict.type.code).inc()

    def response_verdict(self, verdict: ResponseVerdict) -> None:
        self.response_verdicts.labels(action=verdict.action, type=verdict.type.code).inc()

    def observe(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format served at ``/metrics``."""
        return generate_latest(self.registry)
