"""Kafka in and out of newswatch: the article producer, a portable streaming source, and sinks.

- :class:`ArticlePublisher` puts raw articles on the articles topic (key = the
  article's stable id, value = ``RawArticle`` JSON, headers = source and
  schema version) with an idempotent, acks=all producer. Delivery is checked:
  unacknowledged records are sent again through ``core.retry``; a broker that
  stays away ends in :class:`KafkaUnavailable`. Records the broker refuses for
  good (too large) come back in :class:`PublishStats` instead of blocking the rest.
- :class:`ReadFromKafka` is a pure-Python splittable DoFn over kafka-python,
  so it runs on any portable runner (Prism, Flink, Dataflow) without the Java
  expansion service. One restriction per partition: an offset range from the
  start offset to "infinity" (streaming) or to the end offsets seen at start
  (bounded replays). Empty polls defer the remainder instead of blocking; a
  manual watermark follows record times and moves to wall time when a
  partition is idle; the backlog (end offset minus position) is the size
  estimate. The consumer group's offsets are committed in a bundle finalizer,
  that is, only after the runner has durably committed the bundle's output.
  Downstream sinks write idempotently, so a replay after a crash is harmless
  (effectively once).
- :class:`DecodeRawArticles` turns records into ``RawArticle`` and sends poison
  messages (not UTF-8, not JSON, not an article) to a dead-letter output.
- :class:`WriteToKafka` is the sink for alerts and dead letters: sends in
  ``process``, waits for every acknowledgement in ``finish_bundle`` so a bundle
  commits only when Kafka has its records; records Kafka refuses for good come
  out as dead letters, anything else fails the bundle (Beam retries it).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.utils.timestamp import Duration, Timestamp

from connectors.base import dead, payload_of, preview_of
from core.errors import NewswatchError, RecordError
from core.ids import article_id, canonical_url, content_hash
from core.records import SCHEMA_VERSION, DeadLetter, RawArticle
from core.retry import Backoff, TransientError, retry_call
from core.settings import KafkaSettings

log = logging.getLogger(__name__)

STAGE_DECODE = "kafka.decode"
STAGE_WRITE = "kafka.write"
DEAD = "dead"

RECORD_TYPE_ARTICLE = b"raw_article"
# The restriction of a streaming read has no end.
UNBOUNDED = sys.maxsize

StartAt = Literal["committed", "earliest", "latest"]


class KafkaUnavailable(NewswatchError):
    """Kafka could not be reached, or did not acknowledge records, after retries."""

    code = "kafka_unavailable"


class KafkaConfigError(NewswatchError):
    """The Kafka settings cannot work (no bootstrap servers, a missing compression library...)."""

    code = "kafka_config"


# --- clients ----------------------------------------------------------------


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """The connection part of every kafka-python client's configuration."""
    if not settings.enabled:
        raise KafkaConfigError("kafka.bootstrap_servers is not set", hint="set NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS=host:port")
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()],
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return config


def _error_classes(*names: str) -> tuple[type, ...]:
    # kafka-python renamed some errors between 2.x and 3.x; take those this version has.
    from kafka import errors

    return tuple(getattr(errors, n) for n in names if isinstance(getattr(errors, n, None), type))


def is_transient(exc: BaseException) -> bool:
    """Kafka errors worth another try: no broker, timeouts, leader moves, lost connections."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, _error_classes("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError", "NodeNotReadyError",
                                      "BrokerNotAvailableError")):
        return True
    return bool(getattr(exc, "retriable", False))


def _is_rejection(exc: BaseException) -> bool:
    """Errors that will repeat for this record whatever we do (it is too large or invalid)."""
    return isinstance(exc, _error_classes("MessageSizeTooLargeError", "RecordTooLargeError", "RecordListTooLargeError",
                                          "InvalidRecordError", "CorruptRecordError", "InvalidTopicError"))


def _connect(factory: Callable[[], Any], what: str, attempts: int, backoff: Backoff) -> Any:
    try:
        return retry_call(factory, attempts=attempts, backoff=backoff, is_transient=is_transient, what=what)
    except Exception as exc:  # noqa: BLE001 - reported with the setting to check
        if isinstance(exc, NewswatchError):
            raise
        if is_transient(exc):
            raise KafkaUnavailable(
                f"{what}: Kafka is not reachable ({exc!r})",
                hint="check kafka.bootstrap_servers; locally: deploy/local/services.sh start kafka",
            ) from exc
        raise


def new_consumer(settings: KafkaSettings, group: str | None, *, client_id: str = "newswatch-reader",
                 attempts: int = 4, backoff: Backoff = Backoff(cap_s=5.0), **extra: Any):
    """A kafka-python consumer for manual assignment (it never joins the group; it only commits)."""
    from kafka import KafkaConsumer

    config = {
        **client_config(settings),
        "client_id": client_id,
        "group_id": group,
        "enable_auto_commit": False,
        # When a committed offset has been deleted by retention, start at the oldest record kept.
        "auto_offset_reset": "earliest",
        # An idle partition must not hold the poll longer than the configured timeout.
        "fetch_max_wait_ms": min(200, settings.poll_timeout_ms),
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "request_timeout_ms": 30000,
        **extra,
    }
    return _connect(lambda: KafkaConsumer(**config), f"kafka consumer {client_id}", attempts, backoff)


def ensure_topics(settings: KafkaSettings, topics: Iterable[str] | None = None, *, partitions: int = 3,
                  replication_factor: int = 1, configs: dict[str, str] | None = None,
                  attempts: int = 4, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet (default: articles, alerts, dead letters).

    Idempotent: existing topics are left as they are, even with another
    partition count. Returns the names created. Waits until every new topic
    has a leader for each partition.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    names = list(topics) if topics is not None else [settings.articles_topic, settings.alerts_topic, settings.dead_letter_topic]
    admin = _connect(lambda: KafkaAdminClient(**client_config(settings), client_id="newswatch-admin",
                                              request_timeout_ms=int(timeout_s * 1000)),
                     "kafka admin", attempts, Backoff(cap_s=5.0))
    try:
        existing = set(retry_call(admin.list_topics, attempts=attempts, is_transient=is_transient, what="kafka list topics"))
        missing = [n for n in names if n not in existing]
        if not missing:
            return []
        spec = {n: {"num_partitions": partitions, "replication_factor": replication_factor, "configs": dict(configs or {})}
                for n in missing}
        response = retry_call(
            lambda: admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False, wait_for_metadata=True),
            attempts=attempts, is_transient=is_transient, what="kafka create topics",
        )
        created = []
        for topic in response.get("topics", []):
            code = topic.get("error_code", 0)
            if code == 0:
                created.append(topic["name"])
            elif code != TopicAlreadyExistsError.errno:  # another process created it meanwhile
                raise KafkaConfigError(f"cannot create topic {topic['name']!r}: {topic.get('error_message') or code}")
        log.info("kafka topics created=%s partitions=%d", ",".join(created) or "-", partitions)
        return created
    finally:
        admin.close()


def consumer_lag(settings: KafkaSettings, topic: str, group: str | None = None) -> dict[int, dict[str, int | None]]:
    """Per partition: the group's committed offset, the end offset and the lag (for status and metrics)."""
    from kafka import TopicPartition

    consumer = new_consumer(settings, group or settings.consumer_group, client_id="newswatch-lag")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = consumer.end_offsets(tps) if tps else {}
        out = {}
        for tp in tps:
            committed = consumer.committed(tp)
            end = ends.get(tp)
            out[tp.partition] = {"committed": committed, "end": end,
                                 "lag": None if end is None else end - (committed or 0)}
        return out
    finally:
        consumer.close()


# --- producing ----------------------------------------------------------------


def article_key(record: RawArticle) -> bytes:
    """The article's stable id as the message key, so one article always lands in one partition.

    Equal to the parsed ``Article.id`` whenever the record has a URL.
    """
    return article_id(canonical_url(record.url), content_hash(record.title or "", record.body or "")).encode("ascii")


def article_headers(record: RawArticle) -> list[tuple[str, bytes]]:
    return [
        ("source", (record.source or "").encode("utf-8")),
        ("schema_version", str(SCHEMA_VERSION).encode("ascii")),
        ("record_type", RECORD_TYPE_ARTICLE),
    ]


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


@dataclass
class _Pending:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    ref: Any = None  # the record this message came from, handed back if Kafka refuses it
    future: Any = None


@dataclass
class Rejected:
    """A message Kafka refused for good (e.g. larger than the broker accepts)."""

    topic: str
    key: bytes | None
    value: bytes | None
    error: str
    ref: Any = None

    def dead_letter(self) -> DeadLetter:
        value = self.value or b""
        payload = preview_of(value, len(value)) if len(value) > 64 * 1024 else payload_of(value)
        origin = f"{self.topic}/{(self.key or b'').decode('utf-8', 'replace')}"
        return dead(STAGE_WRITE, "kafka_rejected", self.error, payload, origin, "KafkaError")


@dataclass
class PublishStats:
    sent: int = 0
    bytes: int = 0
    attempts: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def add(self, other: "PublishStats") -> None:
        self.sent += other.sent
        self.bytes += other.bytes
        self.attempts += other.attempts
        self.rejected.extend(other.rejected)


class ArticlePublisher:
    """An idempotent Kafka producer for raw articles and JSON records.

    ``send``/``publish_json`` queue a message; ``flush`` waits until Kafka has
    acknowledged every queued message (acks=all), sending unacknowledged ones
    again with backoff, and raises :class:`KafkaUnavailable` when they still
    fail. ``publish`` is queue-and-flush for a batch of articles. Use it as a
    context manager, or call ``close``.
    """

    def __init__(self, settings: KafkaSettings, *, topic: str | None = None, client_id: str = "newswatch-publisher",
                 attempts: int = 5, backoff: Backoff = Backoff(base_s=0.5, cap_s=10.0), timeout_s: float = 30.0,
                 linger_ms: int = 20, batch_bytes: int = 512 * 1024, max_request_bytes: int = 8 * 1024 * 1024):
        self.settings = settings
        self.topic = topic or settings.articles_topic
        self._attempts = attempts
        self._backoff = backoff
        self._timeout_s = timeout_s
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._config = {
            **client_config(settings),
            "client_id": client_id,
            "enable_idempotence": True,
            "acks": "all",
            "compression_type": None if settings.compression == "none" else settings.compression,
            # With ~5 KB articles the default 16 KB batch holds three records
            # and caps a producer at a few hundred per second.
            "linger_ms": linger_ms,
            "batch_size": batch_bytes,
            "max_request_size": max_request_bytes,
            "max_block_ms": int(timeout_s * 1000),
            "request_timeout_ms": int(min(timeout_s, 30.0) * 1000),
            "delivery_timeout_ms": int(max(timeout_s, 30.0) * 1000) + linger_ms + 1000,
            "bootstrap_timeout_ms": int(timeout_s * 1000),
        }
        self._producer = None
        self._connect()

    def _connect(self):
        from kafka import KafkaProducer

        def make():
            try:
                return KafkaProducer(**self._config)
            except RuntimeError as exc:
                # kafka-python says this when e.g. python-snappy/lz4/zstandard is missing.
                raise KafkaConfigError(str(exc), hint=f"install the library for kafka.compression={self.settings.compression!r} or use gzip") from exc

        self._producer = _connect(make, "kafka producer", self._attempts, self._backoff)
        return self._producer

    def __enter__(self) -> "ArticlePublisher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None)

    def close(self, flush: bool = True) -> None:
        if self._producer is None:
            return
        try:
            if flush and self._pending:
                self.flush()
        finally:
            self._producer.close(timeout=5)
            self._producer = None

    # --- queueing -----------------------------------------------------------

    def send(self, topic: str, key: bytes | str | None, value: bytes | str | dict | None,
             headers: list[tuple[str, bytes]] | None = None, *, ref: Any = None) -> None:
        """Queue one message; ``flush`` confirms it."""
        item = _Pending(topic, _as_bytes(key), _as_bytes(value), list(headers or []), ref)
        with self._lock:
            self._pending.append(item)
        self._send(item)

    def publish_json(self, topic: str, key: bytes | str | None, value: Any, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue a JSON record (an object with ``to_json``, a dict, a JSON string or bytes) for ``flush``."""
        if hasattr(value, "to_json"):
            value = value.to_json()
        self.send(topic, key, value, headers)

    def publish(self, records: Iterable[RawArticle], topic: str | None = None) -> PublishStats:
        """Send raw articles and wait for Kafka's acknowledgement of each (plus anything queued before)."""
        topic = topic or self.topic
        for record in records:
            self.send(topic, article_key(record), record.to_json(), article_headers(record), ref=record)
        return self.flush()

    def _send(self, item: _Pending) -> None:
        if self._producer is None:
            self._connect()
        try:
            item.future = self._producer.send(item.topic, key=item.key, value=item.value, headers=item.headers)
        except Exception as exc:  # noqa: BLE001 - classified when flushing
            item.future = exc

    # --- confirming ---------------------------------------------------------

    def flush(self) -> PublishStats:
        """Wait until every queued message is acknowledged; returns what was sent and refused.

        Raises :class:`KafkaUnavailable` when messages are still unacknowledged
        after the retries (the queue is then cleared: the caller decides what
        to send again).
        """
        with self._lock:
            batch, self._pending = self._pending, []
        stats = PublishStats()
        if not batch:
            return stats
        state = {"todo": batch, "first": True}

        def settle(item: _Pending, error: BaseException | None, failed: list) -> None:
            if error is None:
                stats.sent += 1
                stats.bytes += len(item.value or b"")
            elif _is_rejection(error):
                stats.rejected.append(Rejected(item.topic, item.key, item.value, repr(error), item.ref))
            else:
                failed.append(item)

        def attempt() -> None:
            todo = state["todo"]
            if not state["first"]:
                # A failed flush can leave kafka-python's idempotent producer
                # in a fatal state; a new one is cheap next to the backoff.
                self._reset_producer()
                for item in todo:
                    self._send(item)
            state["first"] = False
            stats.attempts += 1
            self._flush_producer()
            failed: list[_Pending] = []
            suspects: list[_Pending] = []
            for item in todo:
                error = self._outcome(item)
                if error is not None and _is_rejection(error):
                    suspects.append(item)
                else:
                    settle(item, error, failed)
            if suspects:
                # A too-large record fails its whole batch, and kafka-python
                # then aborts every batch in flight with the same error: send
                # the suspects one by one so that only the real culprits are refused.
                for item in suspects:
                    self._reset_producer()
                    self._send(item)
                    self._flush_producer()
                    settle(item, self._outcome(item), failed)
                self._reset_producer()
            state["todo"] = failed
            if failed:
                raise TransientError(f"{len(failed)} of {len(todo)} messages not acknowledged: {self._outcome(failed[-1])!r}")

        try:
            retry_call(attempt, attempts=self._attempts, backoff=self._backoff, is_transient=is_transient, what="kafka publish")
        except Exception as exc:  # noqa: BLE001 - one clear error for the caller
            raise KafkaUnavailable(
                f"Kafka did not acknowledge {len(state['todo'])} of {len(batch)} messages after {stats.attempts} attempts: {exc}",
                hint="check that the broker is up and the topic exists (kafka.bootstrap_servers)",
            ) from exc
        for r in stats.rejected:
            log.warning("kafka rejected topic=%s key=%s bytes=%d error=%s", r.topic, r.key, len(r.value or b""), r.error)
        return stats

    def _flush_producer(self) -> None:
        self._deadline = time.monotonic() + self._timeout_s
        try:
            self._producer.flush(timeout=self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - the futures say which messages failed
            # kafka-python's flush returns early ("Future not done") when it
            # splits a batch the broker found too large; _outcome waits on.
            log.debug("kafka flush incomplete error=%r", exc)

    def _reset_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            try:
                old.close(timeout=0)
            except Exception:  # noqa: BLE001 - the old producer is abandoned either way
                pass
        # One try here: the caller's retry loop owns the backoff.
        from kafka import KafkaProducer

        self._producer = KafkaProducer(**self._config)

    def _outcome(self, item: _Pending) -> BaseException | None:
        future = item.future
        if isinstance(future, BaseException):
            return future
        if future is None:
            from kafka.errors import KafkaTimeoutError

            return KafkaTimeoutError("never sent")
        if not future.is_done:
            try:
                future.get(timeout=max(0.0, self._deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - classified by the caller
                return exc
        return None if future.succeeded() else future.exception


# --- records read from Kafka ------------------------------------------------------


@dataclass(frozen=True)
class KafkaRecord:
    """One message as read from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def decode_raw_article(record: KafkaRecord) -> RawArticle:
    """The RawArticle in a Kafka message; raises ``RecordError(code="poison_message")`` for anything else."""
    if record.value is None:
        raise RecordError("message has no value (a tombstone)", code="poison_message")
    try:
        text = record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"value is not UTF-8 ({exc.reason} at byte {exc.start})", code="poison_message") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="poison_message") from None
    if not isinstance(data, dict):
        raise RecordError(f"value is JSON {type(data).__name__}, not an article object", code="poison_message")
    if not isinstance(data.get("source"), str):
        raise RecordError("article has no 'source' text field", code="poison_message")
    for name in ("url", "title", "body", "published", "fetched", "language", "origin", "guid", "content_type"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise RecordError(f"article field {name!r} must be text, got {type(data[name]).__name__}", code="poison_message")
    if not (data.get("title") or data.get("body")):
        raise RecordError("article has neither title nor body", code="poison_message")
    if data.get("meta") is not None and not isinstance(data["meta"], dict):
        raise RecordError("article field 'meta' must be an object", code="poison_message")
    raw = RawArticle.from_dict(data)
    raw.meta = {**(raw.meta or {}), "kafka": record.origin}
    return raw


def poison_letter(record: KafkaRecord, exc: BaseException) -> DeadLetter:
    payload = payload_of(record.value) if record.value is not None else ""
    reason = "poison_message" if isinstance(exc, RecordError) else f"unexpected:{type(exc).__name__}"
    return dead(STAGE_DECODE, reason, str(exc), payload, record.origin, type(exc).__name__)


class _DecodeFn(beam.DoFn):
    def __init__(self):
        self._ok = Metrics.counter("newswatch", "kafka.decoded")
        self._bad = Metrics.counter("newswatch", "kafka.poison")

    def process(self, record: KafkaRecord):
        try:
            raw = decode_raw_article(record)
        except Exception as exc:  # noqa: BLE001 - a poison message must never stop the stream
            self._bad.inc()
            log.warning("kafka poison message origin=%s error=%s", record.origin, exc)
            yield beam.pvalue.TaggedOutput(DEAD, poison_letter(record, exc))
            return
        self._ok.inc()
        yield raw


class DecodeRawArticles(beam.PTransform):
    """KafkaRecord → RawArticle; returns ``(articles, dead)`` with poison messages as dead letters."""

    def expand(self, records):
        out = records | "Decode" >> beam.ParDo(_DecodeFn()).with_outputs(DEAD, main="articles")
        return out.articles, out[DEAD]


# --- the source ------------------------------------------------------------


@dataclass(frozen=True)
class PartitionSpec:
    """One partition to read, from ``start`` to ``stop`` (None: forever)."""

    topic: str
    partition: int
    start: int
    stop: int | None = None


def resolve_start(start: StartAt, committed: int | None, beginning: int, end: int) -> int:
    """The first offset to read: the group's position, else the oldest (or newest) record kept."""
    if start == "earliest":
        return beginning
    if start == "latest":
        return end
    if committed is None:
        return beginning
    # Retention may have deleted records past the committed position.
    return min(max(committed, beginning), end)


def discover_partitions(settings: KafkaSettings, topic: str, group: str | None, start: StartAt, *,
                        stop_at_end: bool = False, max_per_partition: int | None = None,
                        attempts: int = 5) -> list[PartitionSpec]:
    """Every partition of ``topic`` with its start (and optional stop) offset."""
    from kafka import TopicPartition

    consumer = new_consumer(settings, group, client_id="newswatch-discover")
    try:
        def partitions() -> set[int]:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                # A topic created a moment ago may be missing from the metadata still.
                raise TransientError(f"topic {topic!r} has no partitions in the cluster metadata")
            return parts

        try:
            parts = retry_call(partitions, attempts=attempts, backoff=Backoff(base_s=0.2, cap_s=2.0), what=f"kafka partitions {topic}")
        except TransientError as exc:
            raise KafkaConfigError(f"topic {topic!r} does not exist", hint="create it with connectors.kafka.ensure_topics") from exc
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        beginning = retry_call(lambda: consumer.beginning_offsets(tps), attempts=attempts, is_transient=is_transient, what="kafka offsets")
        end = retry_call(lambda: consumer.end_offsets(tps), attempts=attempts, is_transient=is_transient, what="kafka offsets")
        specs = []
        for tp in tps:
            committed = consumer.committed(tp) if (start == "committed" and group) else None
            first = resolve_start(start, committed, beginning[tp], end[tp])
            stop = end[tp] if stop_at_end else None
            if max_per_partition is not None:
                stop = first + max_per_partition if stop is None else min(stop, first + max_per_partition)
            specs.append(PartitionSpec(topic, tp.partition, first, stop))
        log.info("kafka source topic=%s group=%s start=%s partitions=%s", topic, group, start,
                 " ".join(f"{s.partition}:{s.start}-{'' if s.stop is None else s.stop}" for s in specs))
        return specs
    finally:
        consumer.close()


class _PartitionTracker(OffsetRestrictionTracker):
    """Offsets of one partition. Splits only to checkpoint: a partition is read in order by one reader.

    Refusing fractional splits keeps the group's commits in order: the
    residual always starts right after the last offset claimed.
    """

    def __init__(self, offset_range: OffsetRange):
        super().__init__(offset_range)
        self.end_offset: int | None = None

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def is_bounded(self):
        return self.current_restriction().stop != UNBOUNDED

    def current_progress(self) -> RestrictionProgress:
        r = self.current_restriction()
        pos = r.start if self._last_claim_attempt is None else self._last_claim_attempt + 1
        stop = r.stop if r.stop != UNBOUNDED else max(pos, self.end_offset or pos)
        completed, remaining = max(0, pos - r.start), max(1, stop - pos)
        # A fraction, not a count: Beam's worker replaces "completed" with its
        # output-bytes estimate, which is NaN early in a bundle and makes
        # runner-initiated splits fail (seen on Prism). Remaining stays >= 1
        # so the fraction is below 1 and nothing divides by zero.
        return RestrictionProgress(fraction=completed / (completed + remaining), remaining=remaining)


class _EndOffsets:
    """End offsets for size estimates, cached briefly so the runner's sizing calls stay cheap."""

    _lock = threading.Lock()
    _cache: dict[tuple[str, str, int], tuple[float, int]] = {}
    _consumers: dict[str, Any] = {}
    TTL_S = 5.0

    @classmethod
    def get(cls, settings: KafkaSettings, topic: str, partition: int) -> int | None:
        from kafka import TopicPartition

        key = (settings.bootstrap_servers or "", topic, partition)
        now = time.monotonic()
        with cls._lock:
            hit = cls._cache.get(key)
            if hit and now - hit[0] < cls.TTL_S:
                return hit[1]
            try:
                consumer = cls._consumers.get(key[0])
                if consumer is None:
                    consumer = cls._consumers[key[0]] = new_consumer(settings, None, client_id="newswatch-sizer", attempts=1)
                end = consumer.end_offsets([TopicPartition(topic, partition)], timeout_ms=2000)[TopicPartition(topic, partition)]
            except Exception as exc:  # noqa: BLE001 - a size estimate must never fail the pipeline
                log.debug("kafka end offset unavailable topic=%s partition=%d error=%r", topic, partition, exc)
                return hit[1] if hit else None
            cls._cache[key] = (now, end)
            return end


class _KafkaWatermarks(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element, restriction):
        return None

    def create_watermark_estimator(self, state):
        return ManualWatermarkEstimator(state)


def _record_of(msg) -> KafkaRecord:
    headers = tuple((k, v if isinstance(v, bytes) else (v or b"")) for k, v in (msg.headers or []))
    ts = msg.timestamp if msg.timestamp is not None and msg.timestamp >= 0 else int(time.time() * 1000)
    return KafkaRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value, ts, headers)


class _ReadPartitionsFn(beam.DoFn, RestrictionProvider):
    """Reads one partition's offset range, a bundle's worth at a time (bounded form).

    The DoFn is its own restriction provider, so that sizing knows the settings.
    """

    def __init__(self, settings: KafkaSettings, group: str | None, commit: bool, *, bundle_records: int,
                 bundle_seconds: float, idle_resume_s: float):
        super().__init__()
        self._settings = settings
        self._group = group
        self._commit = commit and bool(group)
        self._bundle_records = bundle_records
        self._lookup_timeout_ms = 4 * settings.poll_timeout_ms
        self._bundle_seconds = bundle_seconds
        self._idle_resume_s = idle_resume_s
        self._consumers: dict[tuple[str, int], Any] = {}
        self._committer = None
        self._committed: dict[tuple[str, int], int] = {}
        self._records = Metrics.counter("newswatch", "kafka.records")
        self._bytes = Metrics.counter("newswatch", "kafka.bytes")
        self._commits = Metrics.counter("newswatch", "kafka.commits")

    # --- restrictions -------------------------------------------------------

    def initial_restriction(self, spec: PartitionSpec) -> OffsetRange:
        return OffsetRange(spec.start, UNBOUNDED if spec.stop is None else max(spec.start, spec.stop))

    def create_tracker(self, restriction: OffsetRange) -> _PartitionTracker:
        return _PartitionTracker(restriction)

    def split(self, spec, restriction):
        yield restriction

    def restriction_size(self, spec: PartitionSpec, restriction: OffsetRange) -> float:
        if restriction.stop != UNBOUNDED:
            return float(max(0, restriction.stop - restriction.start))
        end = _EndOffsets.get(self._settings, spec.topic, spec.partition)
        # The backlog, for autoscaling; an unknown backlog still counts as some work.
        return float(max(1, (end or 0) - restriction.start))

    # --- reading --------------------------------------------------------------

    def teardown(self):
        for consumer in [*self._consumers.values(), self._committer]:
            if consumer is not None:
                try:
                    consumer.close(autocommit=False)
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self._consumers.clear()
        self._committer = None

    def _consumer(self, topic: str, partition: int):
        from kafka import TopicPartition

        key = (topic, partition)
        consumer = self._consumers.get(key)
        if consumer is None:
            # One consumer per partition: a poll then returns only this partition's records.
            consumer = new_consumer(self._settings, None, client_id=f"newswatch-reader-{partition}", max_poll_records=2000)
            consumer.assign([TopicPartition(topic, partition)])
            self._consumers[key] = consumer
        return consumer

    def _commit_offset(self, topic: str, partition: int, offset: int | None) -> None:
        """Commit ``offset`` (the next to read) for the group; called by the bundle finalizer."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if offset is None:
            return
        key = (topic, partition)
        # Finalizers of consecutive bundles may run out of order; never move the group back.
        if self._committed.get(key, -1) >= offset:
            return
        if self._committer is None:
            self._committer = new_consumer(self._settings, self._group, client_id="newswatch-committer")
        retry_call(
            lambda: self._committer.commit({TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)}),
            attempts=3, backoff=Backoff(base_s=0.2, cap_s=2.0), is_transient=is_transient, what="kafka commit",
        )
        self._committed[key] = offset
        self._commits.inc()
        log.debug("kafka committed group=%s topic=%s partition=%d offset=%d", self._group, topic, partition, offset)

    def _read(self, spec: PartitionSpec, tracker, watermark, finalizer) -> Iterator[Any]:
        from kafka import TopicPartition

        tp = TopicPartition(spec.topic, spec.partition)
        # Registered before anything can return: Prism finalizes every bundle
        # of the stage, and the SDK refuses a bundle that has no callback.
        committed = {"offset": None}
        if self._commit:
            finalizer.register(lambda: self._commit_offset(spec.topic, spec.partition, committed["offset"]))
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return
        try:
            consumer = self._consumer(spec.topic, spec.partition)
            if consumer.position(tp, timeout_ms=self._lookup_timeout_ms) != restriction.start:
                consumer.seek(tp, restriction.start)
        except Exception as exc:  # noqa: BLE001 - classified: a broker that is away is waited for
            if not (is_transient(exc) or isinstance(exc, KafkaUnavailable)):
                raise
            # Failing the bundle would stall some runners (Prism); try again later.
            log.warning("kafka unavailable topic=%s partition=%d error=%r", spec.topic, spec.partition, exc)
            tracker.defer_remainder(Duration.of(max(1.0, self._idle_resume_s)))
            return
        started = time.monotonic()
        emitted, last = 0, None
        idle = False
        done = False
        max_ts = None
        while True:
            budget_ms = max(1, int(min(self._settings.poll_timeout_ms, (self._bundle_seconds - (time.monotonic() - started)) * 1000)))
            # kafka-python's poll does not raise while the broker is away; it returns nothing.
            batch = consumer.poll(timeout_ms=budget_ms, max_records=self._bundle_records - emitted).get(tp, [])
            if not batch:
                position = consumer.position(tp)
                if restriction.stop != UNBOUNDED and position >= restriction.stop:
                    # Offsets past the last record (transaction markers, compaction) end the range.
                    tracker.try_claim(restriction.stop)
                    done = True
                idle = True
                break
            for msg in batch:
                if not tracker.try_claim(msg.offset):
                    done = True
                    break
                record = _record_of(msg)
                last = msg.offset
                emitted += 1
                self._records.inc()
                self._bytes.inc(len(msg.value or b""))
                max_ts = record.timestamp_ms if max_ts is None else max(max_ts, record.timestamp_ms)
                yield beam.window.TimestampedValue(record, Timestamp(micros=record.timestamp_ms * 1000))
            if done or emitted >= self._bundle_records or time.monotonic() - started >= self._bundle_seconds:
                break
        highwater = consumer.highwater(tp)
        if isinstance(tracker, _PartitionTracker):
            tracker.end_offset = highwater
        position = consumer.position(tp)
        caught_up = highwater is not None and position >= highwater
        if highwater is not None:
            from core.telemetry import metrics

            m = metrics()
            m.consumer_lag.labels(f"{spec.topic}/{self._group}", str(spec.partition)).set(max(0, highwater - position))
            if emitted:
                m.consumed.labels(spec.topic).inc(emitted)
        self._advance_watermark(watermark, max_ts, caught_up)
        if last is not None:
            committed["offset"] = last + 1
        log.debug("kafka bundle topic=%s partition=%d records=%d next=%s idle=%s done=%s elapsed_s=%.3f",
                  spec.topic, spec.partition, emitted, committed["offset"], idle, done, time.monotonic() - started)
        if not done:
            tracker.defer_remainder(Duration.of(self._idle_resume_s if idle else 0))

    @staticmethod
    def _advance_watermark(watermark, max_ts: int | None, caught_up: bool) -> None:
        if watermark is None:
            return
        now = Timestamp.now()
        candidate = None
        if max_ts is not None:
            candidate = min(Timestamp(micros=max_ts * 1000), now)
        if caught_up:
            # An idle partition must not hold back windows downstream: new records will be newer than now.
            candidate = now if candidate is None else max(candidate, now - Duration.of(1))
        current = watermark.current_watermark()
        if candidate is not None and (current is None or candidate > current):
            watermark.set_watermark(candidate)

    # The finalizer comes first: Beam passes it positionally and the
    # restriction and watermark parameters by keyword.
    def process(self, spec: PartitionSpec,
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(),
                watermark=beam.DoFn.WatermarkEstimatorParam(_KafkaWatermarks())):
        yield from self._read(spec, tracker, watermark, finalizer)


class _ReadPartitionsUnboundedFn(_ReadPartitionsFn):
    """The streaming form: each partition is read forever, checkpointing between bundles."""

    @beam.DoFn.unbounded_per_element()
    # The finalizer comes first: Beam passes it positionally and the
    # restriction and watermark parameters by keyword.
    def process(self, spec: PartitionSpec,
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(),
                watermark=beam.DoFn.WatermarkEstimatorParam(_KafkaWatermarks())):
        yield from self._read(spec, tracker, watermark, finalizer)


class _DiscoverFn(beam.DoFn):
    def __init__(self, settings, topic, group, start, stop_at_end, max_per_partition):
        self._args = (settings, topic, group, start)
        self._kw = {"stop_at_end": stop_at_end, "max_per_partition": max_per_partition}

    def process(self, _impulse):
        for spec in discover_partitions(*self._args, **self._kw):
            if spec.stop is None or spec.stop > spec.start:
                yield spec


def _check_streaming_runner(pipeline) -> None:
    """Refuse runners that cannot run an unbounded read safely (measured with Beam 2.75).

    The FnApiRunner (what DirectRunner falls back to when Prism cannot start)
    runs one stage to completion before the next: stages after a shuffle never
    see a record, while the bundle finalizer has already committed the offsets.
    The BundleBasedDirectRunner rejects the transform.
    """
    runner = type(getattr(pipeline, "runner", None)).__name__
    options = pipeline.options.get_all_options() if getattr(pipeline, "options", None) else {}
    if runner in ("FnApiRunner", "BundleBasedDirectRunner"):
        raise ValueError(
            f"ReadFromKafka without stop_at_end/max_per_partition is unbounded and cannot run on {runner}; "
            "use PrismRunner (--runner=PrismRunner --prism_location=...), FlinkRunner or DataflowRunner, "
            "or pass stop_at_end=True for a bounded read"
        )
    if runner in ("SwitchingDirectRunner", "DirectRunner") and not options.get("prism_location"):
        log.warning("kafka source is unbounded on DirectRunner without --prism_location: if Prism cannot be "
                    "downloaded, DirectRunner falls back to FnApiRunner, which never runs stages after a shuffle")


class ReadFromKafka(beam.PTransform):
    """Read a topic as ``KafkaRecord`` elements (timestamped with the Kafka record time).

    - ``group``: the consumer group whose committed offsets are the start
      (``start="committed"``) and that is committed to after each bundle is
      durably processed; default ``settings.consumer_group``. Offsets are
      committed by this source only, so the group must not be shared with
      consumers that join it.
    - ``start``: ``committed`` (falls back to the oldest kept record when the
      group has none), ``earliest`` or ``latest``.
    - ``stop_at_end``: bounded read up to the end offsets found at start (for
      replays and tests); otherwise the read never ends (a streaming runner
      is needed, e.g. Prism with ``--streaming``).
    - ``max_per_partition``: read at most this many records per partition
      (also bounds the read).
    - ``commit``: set False to read without moving the group.

    Partitions are discovered once, when the pipeline starts.
    """

    def __init__(self, settings: KafkaSettings, topic: str | None = None, *, group: str | None = None,
                 start: StartAt = "committed", stop_at_end: bool = False, max_per_partition: int | None = None,
                 commit: bool = True, bundle_records: int = 2000, bundle_seconds: float = 1.0,
                 idle_resume_s: float = 0.3, label: str | None = None):
        super().__init__(label)
        if start not in ("committed", "earliest", "latest"):
            raise ValueError(f"start must be 'committed', 'earliest' or 'latest', got {start!r}")
        client_config(settings)  # fail at construction, not on a worker
        self._settings = settings
        self._topic = topic or settings.articles_topic
        self._group = group or settings.consumer_group
        self._start = start
        self._bounded = stop_at_end or max_per_partition is not None
        self._stop_at_end = stop_at_end
        self._max = max_per_partition
        self._commit = commit
        self._fn_args = {"bundle_records": bundle_records, "bundle_seconds": bundle_seconds, "idle_resume_s": idle_resume_s}

    def expand(self, pbegin):
        if not self._bounded:
            _check_streaming_runner(pbegin.pipeline)
        fn_class = _ReadPartitionsFn if self._bounded else _ReadPartitionsUnboundedFn
        read_fn = fn_class(self._settings, self._group, self._commit, **self._fn_args)
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "Partitions" >> beam.ParDo(_DiscoverFn(self._settings, self._topic, self._group, self._start, self._stop_at_end, self._max))
            # Spread partitions over workers before the long-running reads start.
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(read_fn)
        )


# --- the sink ---------------------------------------------------------------


def record_key(element: Any) -> bytes:
    """The element's deterministic id (``Alert.id``, ``DeadLetter.id``) as the message key."""
    return str(element.id).encode("utf-8")


def record_value(element: Any) -> bytes:
    """The element's JSON form."""
    if hasattr(element, "to_json"):
        return element.to_json().encode("utf-8")
    return json.dumps(element, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")


def record_headers(element: Any) -> list[tuple[str, bytes]]:
    return [("record_type", type(element).__name__.lower().encode("ascii")),
            ("schema_version", str(SCHEMA_VERSION).encode("ascii"))]


class _WriteFn(beam.DoFn):
    def __init__(self, settings: KafkaSettings, topic: str, key_fn, value_fn, headers_fn, max_pending: int,
                 publisher_args: dict[str, Any]):
        super().__init__()
        self._publisher_args = publisher_args
        self._settings = settings
        self._topic = topic
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._headers_fn = headers_fn
        self._max_pending = max_pending
        self._publisher: ArticlePublisher | None = None
        self._pending = 0
        self._written = Metrics.counter("newswatch", "kafka.written")
        self._rejected = Metrics.counter("newswatch", "kafka.rejected")

    def setup(self):
        # Fails the bundle (and Beam retries it) while the broker is away.
        self._publisher = ArticlePublisher(self._settings, topic=self._topic, client_id="newswatch-writer", **self._publisher_args)

    def teardown(self):
        if self._publisher is not None:
            self._publisher.close(flush=False)
            self._publisher = None

    def start_bundle(self):
        self._pending = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        headers = self._headers_fn(element) if self._headers_fn else None
        self._publisher.send(self._topic, self._key_fn(element), self._value_fn(element), headers,
                             ref=(timestamp, window))
        self._pending += 1
        if self._pending >= self._max_pending:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        from apache_beam.utils.windowed_value import WindowedValue

        # KafkaUnavailable propagates: the bundle fails and is retried, nothing is dropped.
        stats = self._publisher.flush()
        self._pending = 0
        self._written.inc(stats.sent)
        for rejected in stats.rejected:
            self._rejected.inc()
            timestamp, window = rejected.ref
            yield WindowedValue(rejected.dead_letter(), timestamp, [window])


class WriteToKafka(beam.PTransform):
    """Write elements to a topic; returns a PCollection of DeadLetters for records Kafka refused for good.

    ``key_fn``/``value_fn`` map an element to bytes (defaults: its ``id`` and
    its JSON, which suit ``Alert`` and ``DeadLetter``). Every record of a
    bundle is acknowledged (acks=all) before the bundle completes; when Kafka
    stays unavailable (``attempts`` tries of up to ``timeout_s`` each) the
    bundle fails and the runner retries it.
    """

    def __init__(self, settings: KafkaSettings, topic: str, key_fn: Callable[[Any], bytes | str | None] = record_key,
                 value_fn: Callable[[Any], bytes | str] = record_value,
                 headers_fn: Callable[[Any], list[tuple[str, bytes]]] | None = record_headers,
                 *, max_pending: int = 5000, attempts: int = 5, timeout_s: float = 30.0, label: str | None = None):
        super().__init__(label)
        client_config(settings)
        self._fn = _WriteFn(settings, topic, key_fn, value_fn, headers_fn, max_pending,
                            {"attempts": attempts, "timeout_s": timeout_s})

    def expand(self, pcoll):
        return pcoll | "Write" >> beam.ParDo(self._fn)
