"""Shared fixtures: the real services for integration tests, and unique names.

Integration tests talk to the Kafka broker and OpenSearch node started by
``deploy/local/services.sh``. When a service is missing they FAIL in CI (or
whenever NEWSWATCH_REQUIRE_SERVICES=1, which ``make test`` sets) and skip
only on a developer's machine that opted out.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest
import requests

KAFKA = os.environ.get("NEWSWATCH_TEST_KAFKA", f"127.0.0.1:{os.environ.get('NEWSWATCH_KAFKA_PORT', '9092')}")
OPENSEARCH = os.environ.get("NEWSWATCH_TEST_OPENSEARCH", f"http://127.0.0.1:{os.environ.get('NEWSWATCH_OPENSEARCH_PORT', '9200')}")


def _services_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("NEWSWATCH_REQUIRE_SERVICES") == "1"


def _missing(service: str, where: str, why: str):
    msg = f"{service} is not reachable at {where} ({why}); start it with `deploy/local/services.sh start`"
    if _services_required():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    host, port = KAFKA.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        _missing("Kafka", KAFKA, str(exc))
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=10000, client_id="newswatch-tests")
        admin.list_topics()
        admin.close()
    except KafkaError as exc:
        _missing("Kafka", KAFKA, repr(exc))
    return KAFKA


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    try:
        r = requests.get(f"{OPENSEARCH}/_cluster/health", params={"wait_for_status": "yellow", "timeout": "30s"}, timeout=35)
        r.raise_for_status()
    except requests.RequestException as exc:
        _missing("OpenSearch", OPENSEARCH, repr(exc))
    return OPENSEARCH


@pytest.fixture
def unique_name(request) -> str:
    """A per-test name for a topic or index, so tests never share state."""
    base = request.node.name.lower()
    base = "".join(c if c.isalnum() else "-" for c in base)[:40].strip("-")
    return f"nwtest-{base}-{uuid.uuid4().hex[:8]}"
