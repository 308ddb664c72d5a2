import socket

import requests

from core import telemetry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_are_served_and_count_stages():
    port = _free_port()
    telemetry.serve(port)
    telemetry.serve(port)  # idempotent
    telemetry.count_stage("parse", "ok", 3)
    telemetry.count_stage("parse", "dead")
    telemetry.metrics().alert_latency.observe(0.2)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'newswatch_records_total{outcome="ok",stage="parse"}' in text
    assert 'newswatch_records_total{outcome="dead",stage="parse"}' in text
    assert "newswatch_alert_latency_seconds_bucket" in text
    assert "newswatch_consumer_lag" in text


def test_first_use_from_many_threads_creates_the_metrics_once():
    import threading

    telemetry._families.cache_clear()
    from prometheus_client import REGISTRY

    for name in list(REGISTRY._names_to_collectors):
        if name.startswith("newswatch_") and not name.startswith("newswatch_feed"):
            try:
                REGISTRY.unregister(REGISTRY._names_to_collectors[name])
            except KeyError:
                pass
    errors = []
    barrier = threading.Barrier(8)

    def hit():
        barrier.wait()
        try:
            telemetry.count_stage("race", "ok")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert telemetry.metrics().records.labels("race", "ok")._value.get() == 8
