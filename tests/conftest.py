"""Shared fixtures: the real services for integration tests, and unique names.

Integration tests talk to the Kafka broker and OpenSearch node started by
``deploy/local/services.sh``. When a service is missing they FAIL in CI (or
whenever NEWSWATCH_REQUIRE_SERVICES=1, which ``make test`` sets) and skip
only on a developer's machine that opted out.
"""

from __future__ import annotations

import os
import socket
import threading
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


class TcpProxy:
    """A loopback TCP proxy that can be switched off (connections reset, then refused) and on again."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.bytes_up = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener, self._stop = listener, threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if up:
                    self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="session")
def tcp_proxy_class():
    """A loopback proxy in front of a real server, to take it "down" without stopping the shared node."""
    return TcpProxy
