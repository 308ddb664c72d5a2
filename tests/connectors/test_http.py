"""The HTTP fetch boundary against a local server: conditional GET, retries, caps, timeouts."""

from __future__ import annotations

import collections
import email.utils
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from connectors.http import PermanentFetchError, TransientFetchError, fetch, parse_retry_after
from core.errors import RecordError
from core.retry import Backoff
from core.settings import FetchSettings

FEED = (Path(__file__).parent / "fixtures" / "feed.xml").read_bytes()
ETAG = '"feed-v1"'
LAST_MODIFIED = "Mon, 14 Nov 2022 10:00:00 GMT"
TINY = Backoff(base_s=0.001, cap_s=0.005)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def send(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server = self.server
        path = urlsplit(self.path).path
        with server.lock:
            server.hits[path] += 1
            hit = server.hits[path]
            server.seen.append((path, dict(self.headers)))
        route = getattr(self, "route_" + path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            self.send(404, b"no such page")
            return
        route(hit)

    def feed(self):
        self.send(200, FEED, {"Content-Type": "application/rss+xml; charset=utf-8", "ETag": ETAG, "Last-Modified": LAST_MODIFIED})

    def route_feed_xml(self, hit):
        if self.headers.get("If-None-Match") == ETAG:
            self.send(304, headers={"ETag": ETAG})
        else:
            self.feed()

    def route_flaky(self, hit):
        if hit == 1:
            self.send(503, b"try later")
        else:
            self.feed()

    def route_down(self, hit):
        self.send(503, b"down")

    def route_busy(self, hit):
        if hit == 1:
            self.send(429, b"slow down", {"Retry-After": "1"})
        else:
            self.feed()

    def route_busy_long(self, hit):
        self.send(429, b"come back in an hour", {"Retry-After": "3600"})

    def route_gone(self, hit):
        self.send(410, b"gone")

    def route_big_declared(self, hit):
        # Claims 50 MB; the client must give up on the header alone.
        self.send_response(200)
        self.send_header("Content-Length", str(50_000_000))
        self.end_headers()
        self._stream(50_000_000)

    def route_big_stream(self, hit):
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._stream(50_000_000)

    def _stream(self, total: int):
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < total and not self.server.release.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.server.sent[self.path] = sent

    def route_slow(self, hit):
        self.server.release.wait(5)
        self.feed()

    def route_trickle(self, hit):
        self.send_response(200)
        self.send_header("Content-Length", "200")
        self.end_headers()
        try:
            for _ in range(200):
                if self.server.release.wait(0.05):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda request, address: None  # clients hanging up on purpose
    srv.hits = collections.Counter()
    srv.seen = []
    srv.sent = {}
    srv.lock = threading.Lock()
    srv.release = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def settings(**kw) -> FetchSettings:
    base = {"timeout_s": 2.0, "retries": 2, "max_bytes": 1_000_000, "user_agent": "newswatch-test/1"}
    base.update(kw)
    return FetchSettings(**base)


def test_fetch_feed_sends_user_agent_and_returns_validators(server):
    result = fetch(server.url + "/feed.xml", settings())
    assert result.status == 200 and not result.not_modified
    assert result.content == FEED
    assert result.etag == ETAG and result.last_modified == LAST_MODIFIED
    assert result.content_type.startswith("application/rss+xml")
    assert result.attempts == 1 and result.elapsed_s > 0
    path, headers = server.seen[0]
    assert headers["User-Agent"] == "newswatch-test/1"
    assert "application/rss+xml" in headers["Accept"]


def test_conditional_get_gives_not_modified(server):
    first = fetch(server.url + "/feed.xml", settings())
    again = fetch(server.url + "/feed.xml", settings(), etag=first.etag, last_modified=first.last_modified)
    assert again.not_modified and again.status == 304
    assert again.content == b""
    assert again.etag == ETAG and again.last_modified == LAST_MODIFIED
    assert server.seen[1][1]["If-None-Match"] == ETAG
    assert server.seen[1][1]["If-Modified-Since"] == LAST_MODIFIED


def test_503_is_retried_then_succeeds(server):
    sleeps: list[float] = []
    result = fetch(server.url + "/flaky", settings(), backoff=TINY, sleep=sleeps.append)
    assert result.status == 200 and result.content == FEED
    assert result.attempts == 2 and server.hits["/flaky"] == 2
    assert len(sleeps) == 1


def test_transient_failure_gives_up_after_the_configured_retries(server):
    sleeps: list[float] = []
    with pytest.raises(TransientFetchError) as info:
        fetch(server.url + "/down", settings(retries=3), backoff=TINY, sleep=sleeps.append)
    assert info.value.status == 503 and info.value.code == "http_status"
    assert server.hits["/down"] == 4 and len(sleeps) == 3
    assert isinstance(info.value, RecordError)


def test_429_waits_for_retry_after(server):
    sleeps: list[float] = []
    result = fetch(server.url + "/busy", settings(), backoff=TINY, sleep=sleeps.append)
    assert result.status == 200
    assert sleeps and sleeps[0] >= 1.0


def test_retry_after_beyond_the_budget_is_left_to_the_caller(server):
    sleeps: list[float] = []
    with pytest.raises(TransientFetchError) as info:
        fetch(server.url + "/busy-long", settings(), backoff=TINY, sleep=sleeps.append)
    assert info.value.retry_after == 3600
    assert server.hits["/busy-long"] == 1 and sleeps == []


@pytest.mark.parametrize("path,status", [("/missing", 404), ("/gone", 410)])
def test_4xx_is_permanent_and_not_retried(server, path, status):
    sleeps: list[float] = []
    with pytest.raises(PermanentFetchError) as info:
        fetch(server.url + path, settings(), backoff=TINY, sleep=sleeps.append)
    assert info.value.status == status and info.value.code == "http_status"
    assert server.hits[path] == 1 and sleeps == []


def test_declared_oversize_body_is_refused_without_reading(server):
    started = time.monotonic()
    with pytest.raises(PermanentFetchError) as info:
        fetch(server.url + "/big-declared", settings(max_bytes=100_000))
    assert info.value.code == "too_large"
    assert time.monotonic() - started < 2


def test_streamed_oversize_body_is_cut_at_the_cap(server):
    with pytest.raises(PermanentFetchError) as info:
        fetch(server.url + "/big-stream", settings(max_bytes=300_000))
    assert info.value.code == "too_large"
    server.release.set()
    deadline = time.monotonic() + 5
    while "/big-stream" not in server.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    # Socket buffers let the server run ahead a little, never to the end.
    assert server.sent["/big-stream"] < 50_000_000 // 2


def test_slow_server_times_out_and_is_retried(server):
    started = time.monotonic()
    with pytest.raises(TransientFetchError) as info:
        fetch(server.url + "/slow", settings(timeout_s=0.3, retries=1), backoff=TINY, sleep=lambda s: None)
    assert info.value.code == "timeout"
    assert server.hits["/slow"] == 2
    assert time.monotonic() - started < 3


def test_trickling_body_is_bounded_by_the_total_budget(server):
    started = time.monotonic()
    with pytest.raises(TransientFetchError) as info:
        fetch(server.url + "/trickle", settings(timeout_s=0.3, retries=0))
    assert info.value.code == "timeout"
    # The per-read timeout never fires (a byte every 50 ms); the body budget does.
    assert time.monotonic() - started < 2


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(TransientFetchError) as info:
        fetch(f"http://127.0.0.1:{port}/feed.xml", settings(retries=2), backoff=TINY, sleep=sleeps.append)
    assert info.value.code == "connection"
    assert len(sleeps) == 2


@pytest.mark.parametrize("url", ["ftp://example.org/feed.xml", "file:///etc/passwd", "feed.xml", "http:///nohost"])
def test_non_http_urls_are_refused(url):
    with pytest.raises(PermanentFetchError) as info:
        fetch(url, settings())
    assert info.value.code == "bad_url"


def test_parse_retry_after_seconds_and_dates():
    now = time.time()
    assert parse_retry_after("120") == 120.0
    in_a_minute = email.utils.formatdate(now + 60, usegmt=True)
    assert 58 <= parse_retry_after(in_a_minute, now=now) <= 61
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
