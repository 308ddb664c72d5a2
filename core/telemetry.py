"""Prometheus metrics for throughput, errors, lag and alert latency.

Beam ``Metrics`` counters stay the source of truth inside a pipeline (every
runner reports them). These process-local Prometheus series mirror them so
that a long-running local process (``newswatch run --stream``, ``newswatch
ingest``) can be scraped while it runs; on a cluster runner the runner's own
metrics system takes over. Nothing is served unless :func:`serve` is called
(``metrics.port`` in the settings).
"""

from __future__ import annotations

import functools
import logging
import threading

log = logging.getLogger(__name__)

_served: dict[int, object] = {}
_lock = threading.Lock()
_families_lock = threading.Lock()


def metrics():
    """The metric families, created on first use (not at import).

    Beam runs bundles in several threads; without the lock two first calls
    would both register the families and one would fail with
    DuplicateTimeseries (lru_cache does not serialise concurrent misses).
    """
    with _families_lock:
        return _families()


@functools.lru_cache(maxsize=1)
def _families():
    from prometheus_client import Counter, Gauge, Histogram

    class M:
        records = Counter("newswatch_records_total", "Records through a pipeline stage", ["stage", "outcome"])
        alerts = Counter("newswatch_alerts_total", "Alerts fired", ["rule"])
        alert_latency = Histogram(
            "newswatch_alert_latency_seconds",
            "From the article entering newswatch (Kafka timestamp or fetch time) to its alert being emitted",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )
        consumer_lag = Gauge("newswatch_consumer_lag", "Kafka records behind the end of a partition (topic/consumer group)", ["topic", "partition"])
        consumed = Counter("newswatch_consumed_total", "Kafka records read", ["topic"])

    return M


def count_stage(stage: str, outcome: str, n: int = 1) -> None:
    if n:
        metrics().records.labels(stage, outcome).inc(n)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics on ``addr:port`` once per process (idempotent)."""
    from prometheus_client import start_http_server

    with _lock:
        if port in _served:
            return
        metrics()
        _served[port] = start_http_server(port, addr=addr)
    log.info("metrics serving addr=%s port=%d path=/metrics", addr, port)
