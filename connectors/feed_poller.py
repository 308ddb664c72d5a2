"""The long-running ingest loop behind ``newswatch ingest``: feeds (and folders) → Kafka.

:class:`FeedPoller` polls every configured feed on its own schedule and
publishes new raw articles to the articles topic, and dead letters to the
dead-letter topic. It is polite and it never gives up on a feed:

- each feed is polled every ``fetch.interval_s`` (or its own ``interval_s``),
  never sooner than the feed's ``<ttl>`` / ``sy:updatePeriod`` (capped at
  ``fetch.max_interval_s``) or the server's Retry-After;
- requests are conditional (ETag / Last-Modified, through ``poll_feed``);
- a failing feed backs off exponentially with jitter up to
  ``fetch.max_interval_s`` and is then retried at that pace forever;
- at most ``fetch.per_host_concurrency`` requests run against one host at a
  time, from a small thread pool;
- items already published are remembered in :mod:`connectors.feed_state`
  (SQLite), so a restart or an unchanged feed publishes nothing again, while
  a corrected item (same guid, new text) is published again.

Feed state (validators, seen items) is saved only after Kafka acknowledged
the records: when the broker is away, nothing is marked seen, the old ETag
is kept, and the next poll fetches and publishes the items again.

One poll logs one key=value line (``feed=… status=200 new=3 seen=17
next_in_s=300``) and updates Prometheus metrics (:class:`PollerMetrics`);
serving them is the caller's job. :func:`feeds_status` reports the health of
every feed for ``newswatch feeds status``.
"""

from __future__ import annotations

import logging
import random
import re
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import requests

from connectors.base import dead
from connectors.feed_state import FeedRecord, FeedStateStore
from connectors.feeds import STAGE_FETCH, FeedState, local_path, poll_feed
from connectors.files import FileSource
from connectors.kafka import ArticlePublisher, KafkaUnavailable, PublishStats
from core.records import DeadLetter, RawArticle
from core.settings import FetchSettings, Settings

log = logging.getLogger(__name__)

FILES_SOURCE = "files"
# Bytes of a feed searched for <ttl>; channel metadata comes before the items.
_TTL_HEAD_BYTES = 64 * 1024
_TTL = re.compile(rb"<(?:\w+:)?ttl>\s*(\d+)\s*</(?:\w+:)?ttl>", re.IGNORECASE)
_SY_PERIOD = re.compile(rb"<(?:\w+:)?updatePeriod>\s*(hourly|daily|weekly|monthly|yearly)\s*</", re.IGNORECASE)
_SY_FREQUENCY = re.compile(rb"<(?:\w+:)?updateFrequency>\s*(\d+)\s*</", re.IGNORECASE)
_PERIOD_S = {b"hourly": 3600, b"daily": 86400, b"weekly": 7 * 86400, b"monthly": 30 * 86400, b"yearly": 365 * 86400}
# Spread polls of feeds that share a schedule, so they do not hit a host together.
_SUCCESS_JITTER = 0.1


@dataclass(frozen=True)
class FeedSpec:
    """A feed to poll, with an optional interval of its own."""

    url: str
    interval_s: float | None = None

    @classmethod
    def parse(cls, text: str | "FeedSpec") -> "FeedSpec":
        """``"URL"`` or ``"URL interval_s=600"`` (as written in ``input.feeds``)."""
        if isinstance(text, FeedSpec):
            return text
        parts = str(text).split()
        if not parts:
            raise ValueError("empty feed entry")
        interval = None
        for option in parts[1:]:
            name, _, value = option.partition("=")
            if name != "interval_s" or not value:
                raise ValueError(f"feed {parts[0]!r}: unknown option {option!r} (only interval_s=SECONDS)")
            interval = float(value)
            if interval <= 0:
                raise ValueError(f"feed {parts[0]!r}: interval_s must be positive")
        return cls(parts[0], interval)


# --- scheduling (plain functions, unit-tested with a fake clock) ------------------


def feed_ttl_s(head: bytes) -> float | None:
    """The refresh period a feed asks for: RSS ``<ttl>`` minutes, else ``sy:updatePeriod``/``updateFrequency``."""
    if not head:
        return None
    m = _TTL.search(head)
    if m and int(m.group(1)) > 0:
        return int(m.group(1)) * 60.0
    period = _SY_PERIOD.search(head)
    if period:
        freq = _SY_FREQUENCY.search(head)
        times = max(1, int(freq.group(1))) if freq else 1
        return _PERIOD_S[period.group(1).lower()] / times
    return None


def next_delay_s(state: FeedState, fetch: FetchSettings, *, interval_s: float | None = None, ttl_s: float | None = None,
                 publish_errors: int = 0, rng: random.Random | None = None) -> float:
    """Seconds until the next poll of a feed.

    Healthy: the interval, raised to the feed's TTL (capped at
    ``max_interval_s``) and to the server's Retry-After, plus up to 10 %
    jitter. Failing (fetch or publish): exponential backoff from the
    interval, with equal jitter (half fixed, half random, so a failing feed
    is never hammered), capped at ``max_interval_s``; Retry-After is a floor
    even above the cap. There is no give-up: a feed failing for good is
    tried every ``max_interval_s``.
    """
    rng = rng or random
    interval = interval_s or fetch.interval_s
    cap = max(fetch.max_interval_s, interval)
    failures = max(state.failures, publish_errors)
    if failures:
        ceiling = min(cap, interval * 2 ** (failures - 1))
        delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    else:
        delay = max(interval, min(ttl_s or 0.0, cap))
        delay *= 1 + rng.uniform(0, _SUCCESS_JITTER)
    return max(delay, state.retry_after or 0.0)


def due(records: dict[str, FeedRecord], now: float) -> list[str]:
    """Feeds whose next poll time has come, most overdue first."""
    ready = [(r.next_poll_at or 0.0, url) for url, r in records.items() if (r.next_poll_at or 0.0) <= now]
    return [url for _, url in sorted(ready)]


def host_of(url: str) -> str:
    """The concurrency bucket of a feed: its host, or 'local' for files."""
    if local_path(url) is not None:
        return "local"
    try:
        return (urlsplit(url).hostname or "unknown").lower()
    except ValueError:
        return "unknown"


# --- metrics --------------------------------------------------------------------


class PollerMetrics:
    """Prometheus counters and gauges of the poller (the caller serves the registry)."""

    _default: "PollerMetrics | None" = None
    _default_lock = threading.Lock()

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        self.fetches = Counter("newswatch_feed_fetches_total", "Feed polls by outcome (HTTP status or error).",
                               ["feed", "status"], registry=registry)
        self.published = Counter("newswatch_feed_items_published_total", "New or changed items published to Kafka.",
                                 ["feed"], registry=registry)
        self.skipped = Counter("newswatch_feed_items_seen_total", "Items skipped because they were published before.",
                               ["feed"], registry=registry)
        self.dead_letters = Counter("newswatch_feed_dead_letters_total", "Dead letters published for a feed.",
                                    ["feed"], registry=registry)
        self.errors = Counter("newswatch_feed_errors_total", "Failed polls and publishes by reason.",
                              ["feed", "reason"], registry=registry)
        self.last_success = Gauge("newswatch_feed_last_success_timestamp_seconds", "Time of the last successful poll.",
                                  ["feed"], registry=registry)
        self.consecutive_errors = Gauge("newswatch_feed_consecutive_errors", "Failed polls in a row.",
                                        ["feed"], registry=registry)
        self.next_poll = Gauge("newswatch_feed_next_poll_timestamp_seconds", "When the feed is polled next.",
                               ["feed"], registry=registry)
        self.poll_seconds = Histogram("newswatch_feed_poll_seconds", "Duration of one fetch and parse.",
                                      registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    @classmethod
    def default(cls) -> "PollerMetrics":
        """The metrics on prometheus_client's global registry, created once."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default


# --- the poller -------------------------------------------------------------------


class _HeadCapture:
    """Wraps a streamed urllib3 response and keeps its first bytes, to find the feed's TTL."""

    def __init__(self, raw, limit: int):
        self._raw = raw
        self._limit = limit
        self.head = bytearray()

    def read1(self, *args, **kwargs):
        chunk = self._raw.read1(*args, **kwargs)
        if len(self.head) < self._limit:
            self.head += chunk[: self._limit - len(self.head)]
        return chunk

    def __getattr__(self, name):
        return getattr(self._raw, name)


class _HeadSession(requests.Session):
    """A session that remembers the head of the last streamed body (poll_feed does not return the bytes)."""

    def __init__(self):
        super().__init__()
        self.capture: _HeadCapture | None = None

    def get(self, url, **kwargs):
        resp = super().get(url, **kwargs)
        if kwargs.get("stream") and hasattr(resp.raw, "read1"):
            self.capture = resp.raw = _HeadCapture(resp.raw, _TTL_HEAD_BYTES)
        return resp

    @property
    def captured_head(self) -> bytes:
        return bytes(self.capture.head) if self.capture is not None else b""


@dataclass
class _Fetched:
    spec: FeedSpec
    previous: FeedRecord
    state: FeedState
    records: list
    ttl_s: float | None
    elapsed_s: float


@dataclass
class PollSummary:
    """What one pass of the poller did."""

    polled: int = 0
    published: int = 0
    skipped: int = 0
    dead_letters: int = 0
    fetch_errors: int = 0
    publish_errors: int = 0
    per_feed: dict[str, dict[str, Any]] = field(default_factory=dict)


class FeedPoller:
    """Polls feeds (and optionally article folders) and publishes to Kafka; see the module docstring.

    ``publisher`` defaults to an :class:`ArticlePublisher` on
    ``settings.kafka`` (anything with ``publish``, ``publish_json`` and
    ``flush`` works); ``store`` to a :class:`FeedStateStore` at
    ``settings.fetch.state_path``. ``clock`` and ``rng`` are injectable for
    tests.
    """

    def __init__(self, settings: Settings, feeds: Iterable[str | FeedSpec] | None = None, *,
                 paths: Iterable[str | Path] | None = None, publisher: ArticlePublisher | None = None,
                 store: FeedStateStore | None = None, metrics: PollerMetrics | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None, max_workers: int = 4,
                 session_factory: Callable[[], requests.Session] = _HeadSession):
        self.settings = settings
        specs = [FeedSpec.parse(f) for f in (settings.input.feeds if feeds is None else feeds)]
        self.feeds: dict[str, FeedSpec] = {s.url: s for s in specs}
        self.paths = [Path(p) for p in (paths or [])]
        self._clock = clock
        self._rng = rng or random.Random()
        self._own_publisher = publisher is None
        self._publisher = publisher
        self._own_store = store is None
        self.store = store or FeedStateStore(settings.fetch.state_path, clock=clock)
        self.metrics = metrics or PollerMetrics.default()
        self._session_factory = session_factory
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="feed-poll")
        self._host_limits: dict[str, threading.BoundedSemaphore] = {}
        self._host_lock = threading.Lock()
        self._records: dict[str, FeedRecord] = {url: self.store.load_or_new(url) for url in self.feeds}
        self._files_next_at = 0.0
        self._files_errors = 0
        self.stop_event = threading.Event()

    # --- lifecycle ------------------------------------------------------------

    def __enter__(self) -> "FeedPoller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._own_publisher and self._publisher is not None:
            self._publisher.close(flush=False)
            self._publisher = None
        if self._own_store:
            self.store.close()

    @property
    def publisher(self) -> ArticlePublisher:
        if self._publisher is None:
            self._publisher = ArticlePublisher(self.settings.kafka, client_id="newswatch-ingest")
        return self._publisher

    def stop(self) -> None:
        self.stop_event.set()

    # --- one pass -------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> PollSummary:
        """Poll the feeds that are due (all of them with ``force``) and the folders, and wait for all."""
        summary = PollSummary()
        now = self._clock()
        urls = list(self.feeds) if force else due(self._records, now)
        futures = [self._submit(url) for url in urls]
        for future in futures:
            self._handle(future.result(), summary)
        if self.paths and (force or self._files_next_at <= now):
            self._poll_files(summary)
        return summary

    def run(self, stop_event: threading.Event | None = None, *, install_signals: bool = True) -> None:
        """Poll until ``stop_event`` is set (or SIGINT/SIGTERM arrives), each feed on its schedule."""
        stop = stop_event or self.stop_event
        restore = self._install_signals(stop) if install_signals else {}
        log.info("ingest started feeds=%d paths=%d state=%s", len(self.feeds), len(self.paths), self.store.path)
        inflight: dict[Future, str] = {}
        summary = PollSummary()
        try:
            while not stop.is_set():
                now = self._clock()
                busy = set(inflight.values())
                for url in due(self._records, now):
                    if url not in busy:
                        inflight[self._submit(url)] = url
                if self.paths and self._files_next_at <= now:
                    self._poll_files(summary)
                if inflight:
                    # Futures cannot watch the stop event; a short cap keeps shutdown prompt.
                    done, _ = wait(list(inflight), timeout=min(1.0, self._seconds_to_next(now)), return_when=FIRST_COMPLETED)
                    for future in done:
                        inflight.pop(future)
                        self._handle(future.result(), summary)
                else:
                    stop.wait(self._seconds_to_next(now))
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            log.info("ingest stopped polled=%d published=%d dead=%d fetch_errors=%d publish_errors=%d",
                     summary.polled, summary.published, summary.dead_letters, summary.fetch_errors, summary.publish_errors)

    def _seconds_to_next(self, now: float) -> float:
        times = [r.next_poll_at or 0.0 for r in self._records.values()]
        if self.paths:
            times.append(self._files_next_at)
        if not times:
            return 60.0
        return min(60.0, max(0.05, min(times) - now))

    @staticmethod
    def _install_signals(stop: threading.Event) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            log.info("ingest stopping signal=%s", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    # --- fetching (worker threads) --------------------------------------------------

    def _host_limit(self, url: str) -> threading.BoundedSemaphore:
        host = host_of(url)
        with self._host_lock:
            limit = self._host_limits.get(host)
            if limit is None:
                limit = self._host_limits[host] = threading.BoundedSemaphore(self.settings.fetch.per_host_concurrency)
            return limit

    def _submit(self, url: str) -> Future:
        return self._pool.submit(self._fetch, self.feeds[url], self._records[url])

    def _fetch(self, spec: FeedSpec, previous: FeedRecord) -> _Fetched:
        started = time.monotonic()
        with self._host_limit(spec.url):
            session = self._session_factory()
            try:
                state, records = poll_feed(spec.url, previous.state, self.settings.fetch, session=session)
            except Exception as exc:  # noqa: BLE001 - one feed's surprise must not stop the loop
                log.exception("feed poll crashed feed=%s", spec.url)
                state = FeedState.from_dict(previous.state.to_dict())
                state.failures += 1
                state.last_error = f"unexpected:{type(exc).__name__}: {exc}"
                state.last_status = None
                records = [dead(STAGE_FETCH, f"unexpected:{type(exc).__name__}", repr(exc), spec.url, spec.url, type(exc).__name__)]
            finally:
                session.close()
        ttl = previous.ttl_s
        if state.last_status is not None and 200 <= state.last_status < 300 and not state.failures:
            ttl = feed_ttl_s(self._head(spec.url, session))
        return _Fetched(spec, previous, state, records, ttl, time.monotonic() - started)

    @staticmethod
    def _head(url: str, session: requests.Session) -> bytes:
        path = local_path(url)
        if path is not None:
            try:
                with path.open("rb") as f:
                    return f.read(_TTL_HEAD_BYTES)
            except OSError:
                return b""
        return getattr(session, "captured_head", b"")

    # --- publishing (the loop's thread) ------------------------------------------------

    def _handle(self, fetched: _Fetched, summary: PollSummary) -> None:
        spec, state, previous = fetched.spec, fetched.state, fetched.previous
        url = spec.url
        now = self._clock()
        summary.polled += 1
        self.metrics.poll_seconds.observe(fetched.elapsed_s)
        entries = [r for r in fetched.records if isinstance(r, RawArticle) or r.stage != STAGE_FETCH]
        fetch_letters = [r for r in fetched.records if isinstance(r, DeadLetter) and r.stage == STAGE_FETCH]
        fresh, stale = self.store.unseen(url, entries)
        articles = [r for r in fresh if isinstance(r, RawArticle)]
        letters = [r for r in fresh if isinstance(r, DeadLetter)] + fetch_letters
        record = FeedRecord(url=url, state=state, next_poll_at=previous.next_poll_at, items_seen=previous.items_seen,
                            ttl_s=fetched.ttl_s, extra=dict(previous.extra))
        try:
            stats = self._publish(articles, letters)
        except KafkaUnavailable as exc:
            # Keep the old validators and seen set: the next poll must fetch and publish these items again.
            errors = int(previous.extra.get("publish_errors", 0)) + 1
            record = FeedRecord(url=url, state=previous.state, next_poll_at=None, items_seen=previous.items_seen,
                                ttl_s=previous.ttl_s, extra={**previous.extra, "publish_errors": errors, "last_publish_error": str(exc)})
            delay = next_delay_s(previous.state, self.settings.fetch, interval_s=spec.interval_s, publish_errors=errors, rng=self._rng)
            record.next_poll_at = now + delay
            self._save(record)
            summary.publish_errors += 1
            self.metrics.errors.labels(url, "kafka_unavailable").inc()
            self.metrics.next_poll.labels(url).set(record.next_poll_at)
            log.error("feed=%s status=%s publish=failed new=%d next_in_s=%.0f error=%s",
                      url, state.last_status, len(articles), delay, exc)
            return
        record.extra.pop("publish_errors", None)
        record.extra.pop("last_publish_error", None)
        record.items_seen += self.store.mark_seen(url, [*fresh, *stale], now)
        delay = next_delay_s(state, self.settings.fetch, interval_s=spec.interval_s, ttl_s=record.ttl_s, rng=self._rng)
        record.next_poll_at = now + delay
        self._save(record)
        new = len(articles) - _rejected_articles(stats)
        dead_count = len(letters) + len(stats.rejected)
        self._count(url, state, new, len(stale), dead_count, record)
        summary.published += new
        summary.skipped += len(stale)
        summary.dead_letters += dead_count
        summary.fetch_errors += 1 if state.failures else 0
        summary.per_feed[url] = {"status": state.last_status, "new": new, "seen": len(stale), "dead": dead_count,
                                 "next_in_s": round(delay, 1), "errors": state.failures}
        line = "feed=%s status=%s new=%d seen=%d dead=%d next_in_s=%.0f errors=%d elapsed_s=%.2f"
        args = (url, state.last_status if not state.failures else "error", new, len(stale), dead_count, delay,
                state.failures, fetched.elapsed_s)
        if state.failures:
            log.warning(line + " last_error=%s", *args, state.last_error)
        else:
            log.info(line, *args)

    def _save(self, record: FeedRecord) -> None:
        self._records[record.url] = record
        self.store.save(record)

    def _count(self, url: str, state: FeedState, new: int, stale: int, dead_count: int, record: FeedRecord) -> None:
        m = self.metrics
        if state.failures:
            m.fetches.labels(url, "error").inc()
            reason = (state.last_error or "error").split(":", 1)[0]
            m.errors.labels(url, reason).inc()
        else:
            m.fetches.labels(url, str(state.last_status)).inc()
            m.last_success.labels(url).set(self._clock())
        m.published.labels(url).inc(new)
        m.skipped.labels(url).inc(stale)
        m.dead_letters.labels(url).inc(dead_count)
        m.consecutive_errors.labels(url).set(state.failures)
        m.next_poll.labels(url).set(record.next_poll_at or 0)

    def _publish(self, articles: list[RawArticle], letters: list[DeadLetter]) -> PublishStats:
        """Publish articles and dead letters; Kafka's refusals become dead letters too."""
        if not articles and not letters:
            return PublishStats()
        publisher = self.publisher
        topic = self.settings.kafka.dead_letter_topic
        for letter in letters:
            publisher.publish_json(topic, letter.id, letter)
        stats = publisher.publish(articles, self.settings.kafka.articles_topic)
        if stats.rejected:
            for rejected in stats.rejected:
                letter = rejected.dead_letter()
                publisher.publish_json(topic, letter.id, letter)
            more = publisher.flush()
            stats.sent += more.sent
        return stats

    # --- folders --------------------------------------------------------------------

    def _poll_files(self, summary: PollSummary) -> None:
        now = self._clock()
        position = self.store.load_position(FILES_SOURCE)
        source = FileSource(self.paths, self.settings.input, position)
        records = list(source.poll())
        articles = [r for r in records if isinstance(r, RawArticle)]
        letters = [r for r in records if isinstance(r, DeadLetter)]
        try:
            stats = self._publish(articles, letters)
        except KafkaUnavailable as exc:
            self._files_errors += 1
            delay = next_delay_s(FeedState(url=FILES_SOURCE), self.settings.fetch, publish_errors=self._files_errors, rng=self._rng)
            self._files_next_at = now + delay
            summary.publish_errors += 1
            self.metrics.errors.labels(FILES_SOURCE, "kafka_unavailable").inc()
            log.error("files paths=%d publish=failed new=%d next_in_s=%.0f error=%s", len(self.paths), len(articles), delay, exc)
            return
        self._files_errors = 0
        self.store.save_position(FILES_SOURCE, source.position())
        self._files_next_at = now + self.settings.fetch.interval_s
        new = len(articles) - _rejected_articles(stats)
        summary.published += new
        summary.dead_letters += len(letters) + len(stats.rejected)
        self.metrics.published.labels(FILES_SOURCE).inc(new)
        self.metrics.dead_letters.labels(FILES_SOURCE).inc(len(letters) + len(stats.rejected))
        if records:
            log.info("files paths=%d new=%d dead=%d", len(self.paths), new, len(letters) + len(stats.rejected))


def _rejected_articles(stats: PublishStats) -> int:
    return sum(isinstance(r.ref, RawArticle) for r in stats.rejected)


def feeds_status(settings: Settings, feeds: Iterable[str | FeedSpec] | None = None, *,
                 now: float | None = None) -> list[dict[str, Any]]:
    """Health of every configured feed (and any other the state file knows), for ``newswatch feeds status``.

    Each dict has url, last_success, last_checked, last_status,
    consecutive_errors, last_error, next_poll_at, next_poll_in_s,
    items_seen, entries_last_poll, ttl_s, etag, last_modified,
    publish_errors and ``polled`` (False for a feed never polled).
    """
    now = time.time() if now is None else now
    specs = [FeedSpec.parse(f) for f in (settings.input.feeds if feeds is None else feeds)]
    path = Path(settings.fetch.state_path)
    known: dict[str, FeedRecord] = {}
    if path.exists():
        with FeedStateStore(path, readonly=True) as store:
            known = {r.url: r for r in store.all()}
    rows = []
    for spec in specs:
        record = known.pop(spec.url, None)
        if record is None:
            rows.append({**FeedRecord(url=spec.url, state=FeedState(url=spec.url)).status(now), "polled": False,
                         "configured": True})
        else:
            rows.append({**record.status(now), "polled": True, "configured": True})
    for record in known.values():
        rows.append({**record.status(now), "polled": True, "configured": False})
    return rows
