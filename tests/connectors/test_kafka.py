"""The Kafka connector: keys and poison messages offline; publish, read, commit and write against the real broker."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from connectors.kafka import (
    UNBOUNDED,
    ArticlePublisher,
    DecodeRawArticles,
    KafkaConfigError,
    KafkaRecord,
    KafkaUnavailable,
    ReadFromKafka,
    WriteToKafka,
    _PartitionTracker,
    _ReadPartitionsFn,
    article_headers,
    article_key,
    client_config,
    consumer_lag,
    decode_raw_article,
    ensure_topics,
    poison_letter,
    resolve_start,
)
from core.errors import RecordError
from core.records import Alert, AlertMatch, DeadLetter, RawArticle
from core.settings import InputSettings, KafkaSettings, PROJECT_ROOT
from transforms.parse import to_article

PRISM = Path(os.environ.get("NEWSWATCH_PRISM", PROJECT_ROOT / ".cache" / "prism" / "prism"))


def raw(i: int, **kw) -> RawArticle:
    base = dict(source="Beispielzeitung", url=f"https://zeitung.example.org/politik/{i}?utm_source=rss",
                title=f"Naryschkin in Ankara ({i})", body=f"Artikel {i}: Sergej Naryschkin trifft einen US-Beamten. " * 3,
                guid=f"z-{i}", language="de")
    base.update(kw)
    return RawArticle(**base)


def record(value: bytes | None, offset: int = 7) -> KafkaRecord:
    return KafkaRecord("articles", 2, offset, b"k", value, 1_700_000_000_000)


# --- offline ---------------------------------------------------------------------


def test_client_config_needs_servers_and_passes_sasl():
    with pytest.raises(KafkaConfigError, match="bootstrap_servers"):
        client_config(KafkaSettings())
    config = client_config(KafkaSettings(bootstrap_servers="a:9092, b:9092", security_protocol="SASL_SSL",
                                         sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"))
    assert config["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("u", "p")


def test_article_key_is_the_parsed_article_id_and_stable():
    a = raw(1)
    assert article_key(a) == to_article(a, InputSettings()).id.encode()
    # Tracking parameters do not move the article to another partition.
    assert article_key(raw(1, url="https://www.zeitung.example.org/politik/1")) == article_key(a)
    no_url = raw(2, url=None)
    assert article_key(no_url) == article_key(raw(2, url=None, guid="other"))
    assert article_key(no_url) != article_key(raw(3, url=None))
    assert dict(article_headers(a)) == {"source": b"Beispielzeitung", "schema_version": b"1", "record_type": b"raw_article"}


def test_decode_keeps_the_article_and_notes_where_it_came_from():
    a = raw(1, meta={"feed_title": "Politik"})
    out = decode_raw_article(record(a.to_json().encode()))
    assert out.title == a.title and out.body == a.body and out.url == a.url
    assert out.meta == {"feed_title": "Politik", "kafka": "articles/2/7"}


@pytest.mark.parametrize("value, detail", [
    (None, "tombstone"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b'["a list"]', "not an article object"),
    (b'{"title": "x", "body": "y"}', "no 'source'"),
    (b'{"source": "s", "title": 5, "body": "y"}', "'title' must be text"),
    (b'{"source": "s"}', "neither title nor body"),
    (b'{"source": "s", "body": "y", "meta": [1]}', "'meta' must be an object"),
])
def test_poison_messages_are_record_errors(value, detail):
    with pytest.raises(RecordError, match=detail) as info:
        decode_raw_article(record(value))
    assert info.value.code == "poison_message"


def test_poison_letter_keeps_binary_payloads_as_base64_with_the_offset():
    bad = record(b"\xff\x00\x01")
    try:
        decode_raw_article(bad)
    except RecordError as exc:
        letter = poison_letter(bad, exc)
    assert letter.reason == "poison_message" and letter.stage == "kafka.decode"
    assert letter.payload == "base64:/wAB" and letter.origin == "articles/2/7"


def test_decode_transform_splits_articles_from_poison():
    good = record(raw(1).to_json().encode(), offset=1)
    bad = record(b"{oops", offset=2)
    with TestPipeline() as p:
        articles, dead = p | beam.Create([good, bad]) | DecodeRawArticles()
        assert_that(articles | beam.Map(lambda a: a.guid), equal_to(["z-1"]), label="good")
        assert_that(dead | beam.Map(lambda d: (d.reason, d.origin, d.payload)),
                    equal_to([("poison_message", "articles/2/2", "{oops")]), label="dead")


def test_resolve_start():
    assert resolve_start("earliest", 50, 10, 100) == 10
    assert resolve_start("latest", 50, 10, 100) == 100
    assert resolve_start("committed", 50, 10, 100) == 50
    assert resolve_start("committed", None, 10, 100) == 10
    # Retention deleted records past the group's position.
    assert resolve_start("committed", 3, 10, 100) == 10
    assert resolve_start("committed", 500, 10, 100) == 100


def test_partition_tracker_only_checkpoints_and_reports_backlog():
    tracker = _PartitionTracker(OffsetRange(100, UNBOUNDED))
    assert not tracker.is_bounded()
    assert tracker.try_claim(100) and tracker.try_claim(105)
    tracker.end_offset = 150
    progress = tracker.current_progress()
    assert progress.completed_work == pytest.approx(6) and progress.remaining_work == 44
    # Beam swaps in a NaN byte count early in a bundle; the fraction must not depend on it.
    assert progress.with_completed(float("nan")).fraction_completed == pytest.approx(0.12)
    # A dynamic split would let two readers share one partition; only checkpoints are allowed.
    assert tracker.try_split(0.5) is None
    primary, residual = tracker.try_split(0)
    assert (primary.start, primary.stop, residual.start, residual.stop) == (100, 106, 106, UNBOUNDED)
    assert not tracker.try_claim(106)
    tracker.check_done()
    bounded = _PartitionTracker(OffsetRange(5, 5))
    assert bounded.is_bounded() and bounded.current_progress().remaining_work >= 1


def test_watermark_follows_records_and_wall_time_when_idle():
    class Estimator:
        def __init__(self):
            self.value = None

        def current_watermark(self):
            return self.value

        def set_watermark(self, ts):
            assert self.value is None or ts >= self.value
            self.value = ts

    w = Estimator()
    _ReadPartitionsFn._advance_watermark(w, 1_700_000_000_000, caught_up=False)
    assert w.value == Timestamp(1_700_000_000)
    _ReadPartitionsFn._advance_watermark(w, 1_600_000_000_000, caught_up=False)  # an older record never moves it back
    assert w.value == Timestamp(1_700_000_000)
    _ReadPartitionsFn._advance_watermark(w, None, caught_up=True)
    assert abs(w.value.micros / 1e6 - time.time()) < 5


def test_unreachable_broker_is_a_clear_error():
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as info:
        ArticlePublisher(KafkaSettings(bootstrap_servers="127.0.0.1:1"), attempts=2, timeout_s=1.0)
    assert "not reachable" in str(info.value) and "services.sh" in str(info.value)
    assert time.monotonic() - started < 15


def test_write_to_unreachable_kafka_fails_the_pipeline():
    letter = DeadLetter(stage="parse", reason="empty_body", detail="", payload="x", origin="o")
    with pytest.raises(Exception, match="not reachable"):
        with TestPipeline() as p:
            (p | beam.Create([letter])
               | WriteToKafka(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "dead", attempts=1, timeout_s=1.0))


def test_unbounded_read_refuses_a_runner_that_would_lose_records():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9092")
    with pytest.raises(ValueError, match="PrismRunner"):
        beam.Pipeline(runner=FnApiRunner()) | ReadFromKafka(settings, "t")
    with pytest.raises(ValueError, match="start must be"):
        ReadFromKafka(settings, "t", start="beginning")


# --- with the real broker --------------------------------------------------------------


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 15.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=f"check-{uuid.uuid4().hex[:8]}", enable_auto_commit=False)
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                out.extend(batch)
        out.extend(m for batch in consumer.poll(timeout_ms=300).values() for m in batch)
    finally:
        consumer.close()
    return out


@pytest.fixture
def kafka(kafka_bootstrap, unique_name) -> KafkaSettings:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, articles_topic=unique_name, alerts_topic=unique_name + "-alerts",
                             dead_letter_topic=unique_name + "-dead", consumer_group=unique_name + "-group")
    ensure_topics(settings, partitions=3)
    return settings


@pytest.mark.integration
def test_ensure_topics_is_idempotent(kafka):
    assert ensure_topics(kafka, partitions=3) == []
    assert ensure_topics(kafka, [kafka.articles_topic, kafka.articles_topic + "-x"], partitions=1) == [kafka.articles_topic + "-x"]


@pytest.mark.integration
def test_publish_and_read_back_in_a_bounded_pipeline(kafka):
    records = [raw(i) for i in range(30)]
    with ArticlePublisher(kafka) as pub:
        stats = pub.publish(records)
    assert stats.sent == 30 and not stats.rejected

    messages = consume(kafka.bootstrap_servers, kafka.articles_topic, 30)
    assert len(messages) == 30
    by_key = {m.key: m for m in messages}
    assert set(by_key) == {article_key(r) for r in records}
    assert len({m.partition for m in messages}) > 1
    m = by_key[article_key(records[0])]
    assert RawArticle.from_json(m.value) == records[0]
    assert dict(m.headers)["schema_version"] == b"1"
    # The same article goes to the same partition when published again.
    with ArticlePublisher(kafka) as pub:
        pub.publish([records[0]])
    again = [x for x in consume(kafka.bootstrap_servers, kafka.articles_topic, 31) if x.key == m.key]
    assert {x.partition for x in again} == {m.partition}

    with TestPipeline() as p:
        read = p | ReadFromKafka(kafka, stop_at_end=True)
        articles, dead = read | DecodeRawArticles()
        assert_that(articles | beam.Map(lambda a: a.guid) | "DistinctGuids" >> beam.Distinct(),
                    equal_to([r.guid for r in records]), label="articles")
        assert_that(dead, equal_to([]), label="no dead")
        assert_that(read | beam.Map(lambda r: (r.topic, r.header("record_type"))) | "DistinctTypes" >> beam.Distinct(),
                    equal_to([(kafka.articles_topic, b"raw_article")]), label="records")
    # The bundle finalizer committed the group's offsets to the end.
    lag = consumer_lag(kafka, kafka.articles_topic)
    assert sum(p["end"] for p in lag.values()) == 31 and all(p["lag"] == 0 for p in lag.values())


@pytest.mark.integration
def test_poison_messages_become_dead_letters_and_the_stream_goes_on(kafka):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    producer.send(kafka.articles_topic, key=b"p", value=b"\x00\x9f binary", partition=0)
    with ArticlePublisher(kafka) as pub:
        pub.publish([raw(1), raw(2)])
    producer.send(kafka.articles_topic, key=b"p", value=b'{"not": "an article"}', partition=0)
    producer.send(kafka.articles_topic, key=b"p", value=b"{broken json", partition=0)
    producer.flush()
    producer.close()
    with ArticlePublisher(kafka) as pub:
        pub.publish([raw(3)])

    with TestPipeline() as p:
        articles, dead = p | ReadFromKafka(kafka, start="earliest", stop_at_end=True) | DecodeRawArticles()
        assert_that(articles | beam.Map(lambda a: a.guid), equal_to(["z-1", "z-2", "z-3"]), label="good")
        assert_that(
            dead | beam.Map(lambda d: (d.reason, d.origin.rsplit("/", 1)[0], d.payload)),
            equal_to([
                ("poison_message", f"{kafka.articles_topic}/0", "base64:AJ8gYmluYXJ5"),
                ("poison_message", f"{kafka.articles_topic}/0", '{"not": "an article"}'),
                ("poison_message", f"{kafka.articles_topic}/0", "{broken json"),
            ]),
            label="dead",
        )


class _FailOn(beam.DoFn):
    def __init__(self, guid: str):
        self._guid = guid

    def process(self, article):
        if article.guid == self._guid:
            raise RuntimeError("downstream failure")
        yield article


@pytest.mark.integration
def test_offsets_are_committed_only_after_processing(kafka):
    topic = kafka.articles_topic + "-single"
    ensure_topics(kafka, [topic], partitions=1)
    with ArticlePublisher(kafka, topic=topic) as pub:
        pub.publish([raw(i) for i in range(5)])

    # A failure downstream of the read fails the bundle: nothing is committed.
    with pytest.raises(Exception, match="downstream failure"):
        with TestPipeline() as p:
            articles, _ = p | ReadFromKafka(kafka, topic, stop_at_end=True) | DecodeRawArticles()
            articles | beam.ParDo(_FailOn("z-3"))
    assert consumer_lag(kafka, topic)[0]["committed"] is None

    with TestPipeline() as p:
        articles, _ = p | ReadFromKafka(kafka, topic, stop_at_end=True) | DecodeRawArticles()
        assert_that(articles | beam.combiners.Count.Globally(), equal_to([5]))
    assert consumer_lag(kafka, topic)[0] == {"committed": 5, "end": 5, "lag": 0}
    # A restart with the same group resumes after the committed records.
    with ArticlePublisher(kafka, topic=topic) as pub:
        pub.publish([raw(i) for i in range(5, 8)])
    with TestPipeline() as p:
        articles, _ = p | ReadFromKafka(kafka, topic, stop_at_end=True) | DecodeRawArticles()
        assert_that(articles | beam.Map(lambda a: a.guid), equal_to(["z-5", "z-6", "z-7"]))
    assert consumer_lag(kafka, topic)[0]["committed"] == 8
    # Another group, or commit=False, leaves this group alone.
    with TestPipeline() as p:
        read = p | ReadFromKafka(kafka, topic, group=kafka.consumer_group + "-other", start="earliest", stop_at_end=True, commit=False)
        assert_that(read | beam.combiners.Count.Globally(), equal_to([8]))
    assert consumer_lag(kafka, topic, kafka.consumer_group + "-other")[0]["committed"] is None


class _AppendTo(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, article):
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(article.guid + "\n")


@pytest.mark.integration
def test_streaming_read_on_prism_delivers_new_records_and_commits(kafka, tmp_path):
    if not PRISM.exists():
        pytest.skip(f"no Prism binary at {PRISM}; build it with "
                    "`GOBIN=$PWD/.cache/prism go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.75.0`")
    out = tmp_path / "seen.txt"
    with ArticlePublisher(kafka) as pub:
        pub.publish([raw(i) for i in range(10)])
    # Without the experiment Beam reuses the process-wide Prism job server that an
    # earlier DirectRunner pipeline created (and failed to download) here.
    options = PipelineOptions(["--runner=PrismRunner", f"--prism_location={PRISM}", "--environment_type=LOOPBACK", "--streaming",
                               "--experiments=disable_prism_server_singleton"])
    p = beam.Pipeline(options=options)
    articles, _ = p | ReadFromKafka(kafka, start="earliest") | DecodeRawArticles()
    # The shuffle puts the sink in a later stage, as in the real pipeline.
    articles | beam.Reshuffle() | beam.ParDo(_AppendTo(str(out)))
    result = p.run()
    try:
        def seen() -> set[str]:
            return set(out.read_text().split()) if out.exists() else set()

        deadline = time.monotonic() + 40
        while len(seen()) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(seen()) == 10
        # Records published while the pipeline runs arrive too.
        with ArticlePublisher(kafka) as pub:
            pub.publish([raw(i) for i in range(10, 15)])
        while len(seen()) < 15 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen() == {f"z-{i}" for i in range(15)}
        while time.monotonic() < deadline and any(v["lag"] for v in consumer_lag(kafka, kafka.articles_topic).values()):
            time.sleep(0.2)
        assert all(v["lag"] == 0 for v in consumer_lag(kafka, kafka.articles_topic).values())
    finally:
        result.cancel()


@pytest.mark.integration
def test_write_alerts_and_dead_letters_keyed_by_id(kafka):
    alert = Alert(id=Alert.make_id("naryshkin", "a1"), rule_id="naryshkin", rule_name="Naryshkin", article_id="a1",
                  title="Naryschkin in Ankara", language="de", url="https://x.org/1",
                  matches=[AlertMatch(text="Naryschkin", field="title", start=0, end=10)], snippet="…", fired_at="2022-11-14T10:00:00+00:00")
    letter = DeadLetter(stage="parse", reason="empty_body", detail="no text", payload="{}", origin="feed")
    with TestPipeline() as p:
        rejected_alerts = p | "Alerts" >> beam.Create([alert]) | "WA" >> WriteToKafka(kafka, kafka.alerts_topic)
        rejected_dead = p | "Dead" >> beam.Create([letter]) | "WD" >> WriteToKafka(kafka, kafka.dead_letter_topic)
        assert_that(rejected_alerts, equal_to([]), label="a")
        assert_that(rejected_dead, equal_to([]), label="d")
    [m] = consume(kafka.bootstrap_servers, kafka.alerts_topic, 1)
    assert m.key == alert.id.encode() and json.loads(m.value)["rule_id"] == "naryshkin"
    assert dict(m.headers)["record_type"] == b"alert"
    [d] = consume(kafka.bootstrap_servers, kafka.dead_letter_topic, 1)
    assert d.key == letter.id.encode() and DeadLetter.from_dict(json.loads(d.value)).reason == "empty_body"


@pytest.mark.integration
def test_records_kafka_refuses_come_back_as_dead_letters(kafka):
    topic = kafka.dead_letter_topic + "-small"
    ensure_topics(kafka, [topic], partitions=1, configs={"max.message.bytes": "4096"})
    small = DeadLetter(stage="parse", reason="empty_body", detail="", payload="ok", origin="a")
    huge = DeadLetter(stage="parse", reason="bad_json", detail="", payload=os.urandom(30_000).hex(), origin="b")
    with TestPipeline() as p:
        rejected = p | beam.Create([small, huge]) | WriteToKafka(kafka, topic)
        assert_that(rejected | beam.Map(lambda d: (d.stage, d.reason, d.origin)),
                    equal_to([("kafka.write", "kafka_rejected", f"{topic}/{huge.id}")]))
    assert [m.key for m in consume(kafka.bootstrap_servers, topic, 1)] == [small.id.encode()]
