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
