"""The ingest loop: scheduling and politeness with a fake clock, a local HTTP feed, and Kafka for real."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from connectors.feed_poller import FeedPoller, FeedSpec, PollerMetrics, due, feed_ttl_s, feeds_status, host_of, next_delay_s
from connectors.feed_state import FeedRecord, FeedStateStore
from connectors.feeds import FeedState
from connectors.kafka import KafkaUnavailable, PublishStats, Rejected
from core.records import DeadLetter, RawArticle
from core.settings import FetchSettings, Settings

FIXTURE = (Path(__file__).parent / "fixtures" / "feed.xml").read_bytes()

EXTRA_ITEM = b"""<item>
      <title>Lawrow trifft Blinken</title>
      <link>https://zeitung.example.org/politik/lawrow-blinken</link>
      <guid isPermaLink="false">zeitung-4712</guid>
      <description>Sergei Lawrow und Anthony Blinken sprechen \xc3\xbcber New START.</description>
    </item>
  </channel>"""


def with_extra_item(feed: bytes) -> bytes:
    return feed.replace(b"</channel>", EXTRA_ITEM)


# --- scheduling ----------------------------------------------------------------------


def fetch_settings(**kw) -> FetchSettings:
    base = {"interval_s": 300.0, "max_interval_s": 3600.0, "timeout_s": 2.0, "retries": 0, "per_host_concurrency": 2}
    base.update(kw)
    return FetchSettings(**base)


def test_feed_spec_parses_an_optional_interval():
    assert FeedSpec.parse("https://a.example/rss") == FeedSpec("https://a.example/rss")
    assert FeedSpec.parse("https://a.example/rss interval_s=60") == FeedSpec("https://a.example/rss", 60.0)
    for bad in ("", "https://a.example/rss every=5", "https://a.example/rss interval_s=0"):
        with pytest.raises(ValueError):
            FeedSpec.parse(bad)


def test_feed_ttl_from_rss_ttl_and_syndication_module():
    assert feed_ttl_s(b"<rss><channel><ttl> 30 </ttl>") == 1800.0
    sy = b'<rdf:RDF xmlns:sy="x"><channel><sy:updatePeriod>hourly</sy:updatePeriod><sy:updateFrequency>2</sy:updateFrequency>'
    assert feed_ttl_s(sy) == 1800.0
    assert feed_ttl_s(b"<channel><sy:updatePeriod>daily</sy:updatePeriod>") == 86400.0
    assert feed_ttl_s(FIXTURE) is None
    assert feed_ttl_s(b"<ttl>0</ttl>") is None and feed_ttl_s(b"") is None


def test_healthy_feed_waits_its_interval_with_a_little_jitter():
    rng = random.Random(7)
    delays = [next_delay_s(FeedState(url="u"), fetch_settings(), rng=rng) for _ in range(200)]
    assert all(300.0 <= d <= 330.0 for d in delays)
    assert max(delays) - min(delays) > 10  # spread, not a fixed beat
    assert 60.0 <= next_delay_s(FeedState(url="u"), fetch_settings(), interval_s=60.0, rng=rng) <= 66.0


def test_feed_ttl_and_retry_after_slow_polling_down():
    rng = random.Random(1)
    s = fetch_settings()
    assert 1800.0 <= next_delay_s(FeedState(url="u"), s, ttl_s=1800.0, rng=rng) <= 1980.0
    # A TTL of a day is capped: news would be hours late.
    assert next_delay_s(FeedState(url="u"), s, ttl_s=86400.0, rng=rng) <= 3600.0 * 1.1
    assert next_delay_s(FeedState(url="u", retry_after=900.0), s, rng=rng) >= 900.0


def test_failing_feed_backs_off_exponentially_with_jitter_and_never_gives_up():
    rng = random.Random(3)
    s = fetch_settings()
    for failures, ceiling in [(1, 300.0), (2, 600.0), (3, 1200.0), (4, 2400.0), (5, 3600.0), (50, 3600.0)]:
        delays = [next_delay_s(FeedState(url="u", failures=failures), s, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, min(delays), max(delays))
    # A permanent failure (404) is still tried at the capped pace.
    gone = FeedState(url="u", failures=200, permanent_failure=True)
    assert next_delay_s(gone, s, rng=rng) <= 3600.0
    # Retry-After is honoured even above the cap.
    assert next_delay_s(FeedState(url="u", failures=1, retry_after=7200.0), s, rng=rng) == 7200.0
    # Kafka being away backs off the same way.
    assert 300.0 <= next_delay_s(FeedState(url="u"), s, publish_errors=2, rng=rng) <= 600.0


def test_due_feeds_are_the_overdue_ones_oldest_first():
    records = {
        "a": FeedRecord(url="a", state=FeedState(url="a"), next_poll_at=50.0),
        "b": FeedRecord(url="b", state=FeedState(url="b"), next_poll_at=None),
        "c": FeedRecord(url="c", state=FeedState(url="c"), next_poll_at=101.0),
        "d": FeedRecord(url="d", state=FeedState(url="d"), next_poll_at=100.0),
    }
    assert due(records, now=100.0) == ["b", "a", "d"]


def test_host_buckets():
    assert host_of("https://WWW.Example.org/rss") == "www.example.org"
    assert host_of("/tmp/feed.xml") == host_of("file:///tmp/feed.xml") == "local"


# --- a local HTTP feed and a fake publisher ----------------------------------------------


class FeedServer:
    """Serves feeds per path with ETag/304, optional failures, delays, and counts requests."""

    def __init__(self):
        self.bodies: dict[str, bytes] = {}
        self.failures: dict[str, tuple[int, dict]] = {}
        self.delay_s = 0.0
        self.requests: list[tuple[str, str | None]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append((self.path, self.headers.get("If-None-Match")))
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if self.path in server.failures:
                        status, headers = server.failures[self.path]
                        self.send_response(status)
                        for k, v in headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = server.bodies.get(self.path)
                    if body is None:
                        self.send_error(404)
                        return
                    etag = f'"{hash(body) & 0xffffffff:x}"'
                    if self.headers.get("If-None-Match") == etag:
                        self.send_response(304)
                        self.send_header("ETag", etag)
                        self.end_headers()
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with server._lock:
                        server.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FeedServer()
    yield s
    s.close()


class FakePublisher:
    """Records what would go to Kafka; can be told to fail like an absent broker."""

    def __init__(self):
        self.articles: list[RawArticle] = []
        self.json: list[tuple[str, str, str]] = []
        self.queued: list = []
        self.down = False
        self.reject_titles: set[str] = set()

    def publish_json(self, topic, key, value, headers=None):
        self.queued.append((topic, key, value.to_json() if hasattr(value, "to_json") else value))

    def publish(self, records, topic=None):
        records = list(records)
        stats = self.flush()
        for r in records:
            if r.title in self.reject_titles:
                stats.rejected.append(Rejected(topic, b"k", r.to_json().encode(), "MessageSizeTooLargeError()", r))
            else:
                self.articles.append(r)
                stats.sent += 1
        return stats

    def flush(self):
        if self.down:
            self.queued.clear()
            raise KafkaUnavailable("Kafka did not acknowledge 1 of 1 messages")
        stats = PublishStats(sent=len(self.queued))
        self.json.extend(self.queued)
        self.queued.clear()
        return stats

    def close(self, flush=True):
        pass

    def letters(self) -> list[dict]:
        return [json.loads(v) for _, _, v in self.json]


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_settings(tmp_path, **fetch) -> Settings:
    return Settings(
        fetch={"interval_s": 300.0, "max_interval_s": 3600.0, "timeout_s": 2.0, "retries": 0, "per_host_concurrency": 2,
               "state_path": str(tmp_path / "feeds.db"), **fetch},
        kafka={"bootstrap_servers": "127.0.0.1:9", "articles_topic": "articles", "dead_letter_topic": "dead"},
    )


def make_poller(settings, feeds, publisher, clock, **kw) -> FeedPoller:
    return FeedPoller(settings, feeds, publisher=publisher, clock=clock, rng=random.Random(0),
                      metrics=PollerMetrics(CollectorRegistry()), **kw)


def test_poll_publishes_new_items_then_nothing_on_304_or_restart(tmp_path, server, caplog):
    server.bodies["/politik.xml"] = FIXTURE
    feed = server.url("/politik.xml")
    settings = make_settings(tmp_path)
    pub, clock = FakePublisher(), Clock()
    caplog.set_level("INFO", logger="connectors.feed_poller")
    with make_poller(settings, [feed], pub, clock) as poller:
        first = poller.run_once()
        titles = [a.title for a in pub.articles]
        assert len(titles) == 3 and "Medien: Russland und USA führen Gespräche in Ankara" in titles
        # The entry without any text is a dead letter on the dead-letter topic.
        assert [d["reason"] for d in pub.letters()] == ["empty_entry"]
        assert {t for t, _, _ in pub.json} == {"dead"}
        assert first.published == 3 and first.dead_letters == 1
        assert f"feed={feed} status=200 new=3 seen=0 dead=1" in caplog.text

        # Not due yet: nothing is fetched.
        assert poller.run_once().polled == 0 and len(server.requests) == 1
        clock.t += 331
        second = poller.run_once()
        assert server.requests[-1][1] is not None  # a conditional GET
        assert second.per_feed[feed]["status"] == 304 and second.published == 0
        assert len(pub.articles) == 3 and len(pub.json) == 1

    # A restart remembers the validators and the seen items.
    server.bodies["/politik.xml"] = with_extra_item(FIXTURE)
    clock.t += 400
    with make_poller(settings, [feed], pub, clock) as poller:
        third = poller.run_once()
        assert third.published == 1 and pub.articles[-1].title == "Lawrow trifft Blinken"
        assert third.skipped == 4  # three articles and the broken entry
        assert len(pub.json) == 1  # the broken entry is not reported again


def test_feed_unchanged_but_served_again_publishes_nothing(tmp_path, server):
    # A server without validators: the seen state alone prevents duplicates.
    server.bodies["/a.xml"] = FIXTURE
    settings = make_settings(tmp_path)
    pub = FakePublisher()
    with make_poller(settings, [server.url("/a.xml")], pub, Clock()) as poller:
        poller.run_once(force=True)
        poller._records[server.url("/a.xml")].state.etag = None  # forget the ETag
        again = poller.run_once(force=True)
    assert again.published == 0 and again.skipped == 4 and len(pub.articles) == 3


def test_broker_outage_keeps_items_unseen_and_the_old_etag(tmp_path, server):
    server.bodies["/a.xml"] = FIXTURE
    feed = server.url("/a.xml")
    settings = make_settings(tmp_path)
    pub, clock = FakePublisher(), Clock()
    pub.down = True
    with make_poller(settings, [feed], pub, clock) as poller:
        summary = poller.run_once()
        assert summary.publish_errors == 1 and pub.articles == []
        record = poller.store.load(feed)
        assert record.state.etag is None and record.extra["publish_errors"] == 1
        assert 150.0 <= record.next_poll_at - clock.t <= 300.0
        pub.down = False
        clock.t = record.next_poll_at
        summary = poller.run_once()
        # The full feed was fetched again (no If-None-Match) and published.
        assert server.requests[-1][1] is None
        assert summary.published == 3 and len(pub.articles) == 3
        assert "publish_errors" not in poller.store.load(feed).extra


def test_failing_feed_is_dead_lettered_backed_off_and_retried(tmp_path, server):
    server.failures["/down.xml"] = (503, {"Retry-After": "1200"})
    feed = server.url("/down.xml")
    settings = make_settings(tmp_path)
    pub, clock = FakePublisher(), Clock()
    registry = CollectorRegistry()
    with FeedPoller(settings, [feed], publisher=pub, clock=clock, rng=random.Random(0), metrics=PollerMetrics(registry)) as poller:
        summary = poller.run_once()
        assert summary.fetch_errors == 1
        [letter] = pub.letters()
        assert letter["reason"] == "feed_unavailable" and letter["stage"] == "feeds.fetch"
        record = poller.store.load(feed)
        assert record.state.failures == 1 and record.next_poll_at - clock.t >= 1200.0
        assert registry.get_sample_value("newswatch_feed_fetches_total", {"feed": feed, "status": "error"}) == 1.0
        assert registry.get_sample_value("newswatch_feed_consecutive_errors", {"feed": feed}) == 1.0
        # Many failures later it is still polled, at most max_interval_s apart.
        del server.failures["/down.xml"]
        server.failures["/down.xml"] = (500, {})
        for _ in range(8):
            clock.t = poller.store.load(feed).next_poll_at
            poller.run_once()
        record = poller.store.load(feed)
        assert record.state.failures == 9 and record.next_poll_at - clock.t <= 3600.0
        # It recovers as soon as the feed is back.
        del server.failures["/down.xml"]
        server.bodies["/down.xml"] = FIXTURE
        clock.t = record.next_poll_at
        assert poller.run_once().published == 3
        assert poller.store.load(feed).state.failures == 0
        assert registry.get_sample_value("newswatch_feed_items_published_total", {"feed": feed}) == 3.0
        assert registry.get_sample_value("newswatch_feed_last_success_timestamp_seconds", {"feed": feed}) == clock.t


def test_per_host_concurrency_is_respected(tmp_path, server):
    for i in range(4):
        server.bodies[f"/f{i}.xml"] = FIXTURE
    server.delay_s = 0.15
    settings = make_settings(tmp_path, per_host_concurrency=1)
    with make_poller(settings, [server.url(f"/f{i}.xml") for i in range(4)], FakePublisher(), Clock(), max_workers=4) as poller:
        poller.run_once()
    assert len(server.requests) == 4 and server.max_active == 1


def test_feed_ttl_and_per_feed_interval_set_the_schedule(tmp_path, server):
    server.bodies["/ttl.xml"] = FIXTURE.replace(b"<language>de</language>", b"<language>de</language><ttl>45</ttl>")
    server.bodies["/fast.xml"] = FIXTURE.replace(b"zeitung-4711", b"fast-4711")
    settings = make_settings(tmp_path)
    clock = Clock()
    feeds = [server.url("/ttl.xml"), server.url("/fast.xml") + " interval_s=60"]
    with make_poller(settings, feeds, FakePublisher(), clock) as poller:
        poller.run_once()
        ttl = poller.store.load(server.url("/ttl.xml"))
        fast = poller.store.load(server.url("/fast.xml"))
    assert ttl.ttl_s == 2700.0 and 2700.0 <= ttl.next_poll_at - clock.t <= 2970.0
    assert 60.0 <= fast.next_poll_at - clock.t <= 66.0


def test_refused_articles_become_dead_letters(tmp_path, server):
    server.bodies["/a.xml"] = FIXTURE
    pub = FakePublisher()
    pub.reject_titles = {"Sacharowa: Gespräche über New START möglich"}
    with make_poller(make_settings(tmp_path), [server.url("/a.xml")], pub, Clock()) as poller:
        summary = poller.run_once()
    assert summary.published == 2
    assert sorted(d["reason"] for d in pub.letters()) == ["empty_entry", "kafka_rejected"]


def test_folders_are_ingested_once(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("Titel\n\nEin Text über Sergej Naryschkin in Ankara.", encoding="utf-8")
    (folder / "bad.json").write_text("{not json", encoding="utf-8")
    settings = make_settings(tmp_path)
    pub = FakePublisher()
    with make_poller(settings, [], pub, Clock(), paths=[folder]) as poller:
        first = poller.run_once()
        again = poller.run_once(force=True)
    assert first.published == 1 and first.dead_letters == 1 and again.published == 0
    assert [d["reason"] for d in pub.letters()] == ["bad_json"]
    with make_poller(settings, [], pub, Clock(), paths=[folder]) as poller:
        assert poller.run_once(force=True).published == 0


def test_run_loop_stops_on_the_event(tmp_path, server):
    server.bodies["/a.xml"] = FIXTURE
    pub = FakePublisher()
    stop = threading.Event()
    with FeedPoller(make_settings(tmp_path), [server.url("/a.xml")], publisher=pub,
                    metrics=PollerMetrics(CollectorRegistry())) as poller:
        thread = threading.Thread(target=poller.run, args=(stop,), kwargs={"install_signals": False})
        thread.start()
        deadline = time.monotonic() + 10
        while not pub.articles and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive() and len(pub.articles) == 3
    assert len(server.requests) == 1  # the next poll is minutes away


def test_feeds_status_lists_configured_and_known_feeds(tmp_path, server):
    server.bodies["/ok.xml"] = FIXTURE
    server.failures["/bad.xml"] = (500, {})
    ok, bad, never = server.url("/ok.xml"), server.url("/bad.xml"), server.url("/never.xml")
    settings = make_settings(tmp_path)
    clock = Clock(time.time())
    with make_poller(settings, [ok, bad], FakePublisher(), clock) as poller:
        poller.run_once()
    rows = {r["url"]: r for r in feeds_status(settings, [ok, bad, never], now=clock.t)}
    assert rows[ok]["last_success"] and rows[ok]["consecutive_errors"] == 0 and rows[ok]["items_seen"] == 4
    assert rows[ok]["last_status"] == 200 and 300 <= rows[ok]["next_poll_in_s"] <= 330
    assert rows[bad]["consecutive_errors"] == 1 and "HTTP 500" in rows[bad]["last_error"] and rows[bad]["last_success"] is None
    assert rows[never]["polled"] is False and rows[never]["next_poll_at"] is None
    # A feed dropped from the configuration is still reported.
    rows = feeds_status(settings, [ok], now=clock.t)
    assert [r["configured"] for r in rows] == [True, False]


def test_feeds_status_without_a_state_file(tmp_path):
    settings = make_settings(tmp_path)
    assert feeds_status(settings, ["https://a.example/rss"])[0]["polled"] is False
    assert not Path(settings.fetch.state_path).exists()


# --- with the real broker --------------------------------------------------------------


@pytest.mark.integration
def test_ingest_from_a_local_http_feed_into_kafka(tmp_path, server, kafka_bootstrap, unique_name):
    from kafka import KafkaConsumer

    from connectors.kafka import ensure_topics

    server.bodies["/politik.xml"] = FIXTURE
    feed = server.url("/politik.xml")
    settings = Settings(
        fetch={"retries": 0, "timeout_s": 2.0, "state_path": str(tmp_path / "feeds.db")},
        kafka={"bootstrap_servers": kafka_bootstrap, "articles_topic": unique_name + "-articles",
               "dead_letter_topic": unique_name + "-dead"},
    )
    ensure_topics(settings.kafka, [settings.kafka.articles_topic, settings.kafka.dead_letter_topic], partitions=2)
    metrics = PollerMetrics(CollectorRegistry())
    with FeedPoller(settings, [feed], metrics=metrics) as poller:
        first = poller.run_once()
        second = poller.run_once(force=True)
    assert first.published == 3 and second.published == 0
    assert second.per_feed[feed]["status"] == 304

    def read(topic: str, expected: int) -> list:
        consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                 group_id=f"check-{uuid.uuid4().hex[:6]}", consumer_timeout_ms=3000)
        out = []
        deadline = time.monotonic() + 15
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
        # Nothing more arrives: no duplicates.
        out.extend(m for batch in consumer.poll(timeout_ms=500).values() for m in batch)
        consumer.close()
        return out

    messages = read(settings.kafka.articles_topic, 3)
    assert len(messages) == 3
    raws = [RawArticle.from_json(m.value) for m in messages]
    assert {r.guid for r in raws} >= {"zeitung-4711"}
    assert all(dict(m.headers)["source"] == "Beispielzeitung – Politik".encode() for m in messages)
    letters = read(settings.kafka.dead_letter_topic, 1)
    assert [DeadLetter.from_dict(json.loads(m.value)).reason for m in letters] == ["empty_entry"]
    with FeedStateStore(settings.fetch.state_path, readonly=True) as store:
        assert store.load(feed).items_seen == 4
